//! Crash points: places where the chaos program makes crustd die as a SIGKILL would, to prove
//! that every step of a lifecycle can be cut short and picked up after a restart.
//!
//! With the `failpoints` feature, `FAILPOINTS="<point>=return"` in crustd's environment makes
//! it SIGKILL itself on reaching `<point>` (the `fail` crate reads the variable at start).
//! Without the feature, [`crash_point!`] compiles to nothing.

/// Marks a crash point named `$name`.
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| $crate::failpoints::crash($name));
    };
}

/// Dies here, at once, as SIGKILL kills: no destructor, no flush, no reply.
#[cfg(feature = "failpoints")]
pub fn crash(point: &str) -> ! {
    log::warn!("crash point {point} reached: crustd kills itself");
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    std::process::abort()
}

/// Reads `FAILPOINTS`; keep the result alive for crustd's lifetime.
#[cfg(feature = "failpoints")]
pub fn setup() -> Option<fail::FailScenario<'static>> {
    Some(fail::FailScenario::setup())
}

/// Without the feature there is nothing to set up.
#[cfg(not(feature = "failpoints"))]
pub fn setup() -> Option<()> {
    None
}

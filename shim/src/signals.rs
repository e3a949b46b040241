//! Signals as readable bytes on a socket (signal-hook's self-pipe), awaited on the event loop.

use std::io;
use std::os::unix::net::UnixStream;

/// Delivery of a set of signals to async code.
#[derive(Debug)]
pub struct SignalPipe {
    /// The read end until it is registered with the event loop on first use: `install` runs
    /// before the runtime exists.
    unregistered: Option<UnixStream>,
    stream: Option<tokio::net::UnixStream>,
}

impl SignalPipe {
    /// Registers handlers for `signals`. For SIGCHLD, call it before anything is spawned.
    pub fn install(signals: &[libc::c_int]) -> io::Result<Self> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        for &signal in signals {
            signal_hook::low_level::pipe::register(signal, write.try_clone()?)?;
        }
        Ok(Self {
            unregistered: Some(read),
            stream: None,
        })
    }

    /// Waits until at least one of the signals arrived since the last call.
    pub async fn next(&mut self) -> io::Result<()> {
        if let Some(read) = self.unregistered.take() {
            self.stream = Some(tokio::net::UnixStream::from_std(read)?);
        }
        let Some(stream) = self.stream.as_ref() else {
            return Err(io::Error::other("signal pipe not registered"));
        };
        let mut drain = [0u8; 64];
        loop {
            stream.readable().await?;
            let mut got = false;
            loop {
                match stream.try_read(&mut drain) {
                    Ok(0) => return Err(io::Error::other("signal pipe closed")),
                    Ok(_) => got = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if got {
                return Ok(());
            }
        }
    }
}

//! The kernel's list format for `cpuset.cpus` and `cpuset.mems`: comma-separated numbers and
//! ranges (`0-3,5,7-8`), as kubelet's CPU and memory managers write them.

use super::invalid;
use crate::error::Result;

/// One more than the highest CPU number a kernel can have (CONFIG_NR_CPUS is at most 8192).
pub const MAX_CPUS: u32 = 8192;
/// One more than the highest NUMA node number a kernel can have (NODES_SHIFT is at most 10).
pub const MAX_NODES: u32 = 1024;

/// A CPU or node number: decimal digits only (no sign, space or `0x`), few enough to parse.
fn number(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Refuses a non-empty `list` that is not in the list format, has a range whose end is below
/// its start, or names a number at or above `limit`. `field` names it in the refusal. The
/// kernel's `a-b:stride/group` form is refused too: kubelet never writes it.
pub fn check(field: &str, list: &str, limit: u32) -> Result<()> {
    if list.is_empty() {
        return Ok(());
    }
    let refused = |why: &str| Err(invalid(format!("{field} {list:?} {why}")));
    for part in list.split(',') {
        let bounds = match part.split_once('-') {
            Some((first, last)) => number(first).zip(number(last)),
            None => number(part).map(|n| (n, n)),
        };
        let Some((first, last)) = bounds else {
            return refused(&format!("has {part:?}, not a number or a range like 0-3"));
        };
        if first > last {
            return refused(&format!("has the reversed range {part:?}"));
        }
        if last >= limit {
            return refused(&format!(
                "names {last}, beyond the {limit} a kernel can have"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::refused_for;
    use super::*;

    #[test]
    fn kernel_lists_pass() {
        for list in ["", "0", "0-3", "0-3,5,7-8", "2,1", "4-4", "0-8191", "8191"] {
            check("cpuset cpus", list, MAX_CPUS).unwrap();
        }
        for list in ["0", "0-1", "1023"] {
            check("cpuset mems", list, MAX_NODES).unwrap();
        }
    }

    #[test]
    fn garbage_reversed_ranges_and_absurd_numbers_are_refused() {
        for list in [
            ",",
            "0,",
            ",0",
            "0,,1",
            "a",
            "0-",
            "-3",
            "0-3-5",
            "1 ,2",
            " 1",
            "+1",
            "0x1",
            "1\n",
            "0-3:2/4",
            "all",
            "3-1",
            "8192",
            "0-8192",
            "99999999999999999999",
        ] {
            refused_for(check("cpuset cpus", list, MAX_CPUS), "cpuset cpus");
        }
        refused_for(check("cpuset mems", "1024", MAX_NODES), "cpuset mems");
    }
}

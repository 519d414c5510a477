//! The guest kernel command line: husk's defaults, device slots, user parameters, and the
//! init arguments after `--`.

use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;

/// Parameters every husk guest gets.
///
/// - `console=ttyS0`: the 8250 on COM1 is the console.
/// - `reboot=k`: reboot through the i8042, which the VMM turns into a VM exit.
/// - `panic=-1`: reboot at once on a panic, so a crashed guest ends the VMM (exit status 2)
///   instead of hanging.
/// - `8250.nr_uarts=1`: probe only COM1.
/// - `no_timer_check`: skip the IOAPIC timer check, slow and unreliable under virtualization.
/// - `quiet`: every console byte costs a VM exit; users may add `loglevel=7` to override.
pub const DEFAULT_PARAMS: &[&str] = &[
    "console=ttyS0",
    "reboot=k",
    "panic=-1",
    "8250.nr_uarts=1",
    "no_timer_check",
    "quiet",
];

/// Errors building the command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// A word is empty, contains whitespace or a control character, or is the `--`
    /// separator (which the builder places itself).
    #[error("invalid kernel command line word {0:?}")]
    InvalidWord(String),
    /// The result does not fit the boot protocol's buffer.
    #[error("kernel command line is {len} bytes with its NUL, the limit is {CMDLINE_MAX_SIZE}")]
    TooLong {
        /// Length including the NUL.
        len: usize,
    },
}

/// A kernel command line under construction.
#[derive(Debug, Clone, Default)]
pub struct Cmdline {
    params: Vec<String>,
    init_args: Vec<String>,
}

fn check_word(word: &str) -> Result<(), CmdlineError> {
    let bad = word.is_empty()
        || word == "--"
        || word.chars().any(|c| c.is_whitespace() || c.is_control());
    if bad {
        return Err(CmdlineError::InvalidWord(word.to_string()));
    }
    Ok(())
}

impl Cmdline {
    /// A command line holding [`DEFAULT_PARAMS`].
    pub fn with_defaults() -> Self {
        Self {
            params: DEFAULT_PARAMS.iter().map(|s| s.to_string()).collect(),
            init_args: Vec::new(),
        }
    }

    /// Appends one kernel parameter.
    pub fn param(&mut self, word: &str) -> Result<&mut Self, CmdlineError> {
        check_word(word)?;
        self.params.push(word.to_string());
        Ok(self)
    }

    /// Appends one argument for init.
    pub fn init_arg(&mut self, word: &str) -> Result<&mut Self, CmdlineError> {
        check_word(word)?;
        self.init_args.push(word.to_string());
        Ok(self)
    }

    /// Announces a virtio-mmio device so that the guest probes it.
    pub fn virtio_mmio_device(&mut self, base: u64, size: u64, irq: u32) -> &mut Self {
        let size = if size.is_multiple_of(1024) {
            format!("{}K", size / 1024)
        } else {
            size.to_string()
        };
        self.params
            .push(format!("virtio_mmio.device={size}@{base:#x}:{irq}"));
        self
    }

    /// The final string, without the NUL.
    pub fn render(&self) -> Result<String, CmdlineError> {
        let mut s = self.params.join(" ");
        if !self.init_args.is_empty() {
            s.push_str(" -- ");
            s.push_str(&self.init_args.join(" "));
        }
        let len = s.len() + 1;
        if len > CMDLINE_MAX_SIZE {
            return Err(CmdlineError::TooLong { len });
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_params_then_init_args() {
        let mut c = Cmdline::with_defaults();
        c.init_arg("--poweroff").unwrap();
        c.param("loglevel=7").unwrap();
        c.virtio_mmio_device(0xd000_0000, 0x1000, 5);
        let s = c.render().unwrap();
        assert!(s.starts_with("console=ttyS0 reboot=k panic=-1 "));
        assert!(s.ends_with(" loglevel=7 virtio_mmio.device=4K@0xd0000000:5 -- --poweroff"));
    }

    #[test]
    fn no_separator_without_init_args() {
        let s = Cmdline::default().param("a=b").unwrap().render().unwrap();
        assert_eq!(s, "a=b");
    }

    #[test]
    fn rejects_bad_words() {
        let mut c = Cmdline::default();
        for bad in ["", "a b", "x\n", "--", "nul\0"] {
            assert_eq!(
                c.param(bad).unwrap_err(),
                CmdlineError::InvalidWord(bad.into())
            );
            assert!(c.init_arg(bad).is_err());
        }
    }

    #[test]
    fn rejects_too_long() {
        let mut c = Cmdline::default();
        c.param(&"x".repeat(CMDLINE_MAX_SIZE - 1)).unwrap();
        assert!(c.render().is_ok());
        c.init_arg("y").unwrap();
        assert_eq!(
            c.render().unwrap_err(),
            CmdlineError::TooLong {
                len: CMDLINE_MAX_SIZE + 5
            }
        );
    }
}

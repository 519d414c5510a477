//! The agent's arguments.
//!
//! The kernel passes everything after `--` on its command line to init as argv,
//! so these come from the VM's configuration. Unknown arguments are reported
//! and ignored: a typo must not keep the VM from booting.

use crate::logger::Level;

/// What the agent was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `--poweroff`: power the VM off right after the readiness line.
    pub poweroff: bool,
    /// `--log-level=<error|warn|info|debug>`.
    pub log_level: Level,
    /// `--print-ready-only` (hidden, for debugging on a host): print the
    /// readiness line and exit, without mounting anything.
    pub print_ready_only: bool,
    /// Arguments that were not understood, with the reason, to be logged once
    /// the log level is known.
    pub warnings: Vec<String>,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            poweroff: false,
            log_level: Level::DEFAULT,
            print_ready_only: false,
            warnings: Vec::new(),
        }
    }
}

impl Args {
    /// Parses the arguments, without the program name.
    pub fn parse<I, S>(args: I) -> Args
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Args::default();
        for arg in args {
            let arg = arg.as_ref();
            match arg {
                "--poweroff" => out.poweroff = true,
                "--print-ready-only" => out.print_ready_only = true,
                _ => match arg.strip_prefix("--log-level=") {
                    Some(value) => match value.parse() {
                        Ok(level) => out.log_level = level,
                        Err(()) => out
                            .warnings
                            .push(format!("ignoring unknown log level {value:?}")),
                    },
                    None => out
                        .warnings
                        .push(format!("ignoring unknown argument {arg:?}")),
                },
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_arguments_gives_defaults() {
        let args = Args::parse(Vec::<String>::new());
        assert_eq!(args, Args::default());
        assert!(!args.poweroff);
        assert_eq!(args.log_level, Level::Warn);
    }

    #[test]
    fn known_arguments() {
        let args = Args::parse(["--poweroff", "--log-level=debug"]);
        assert!(args.poweroff);
        assert!(!args.print_ready_only);
        assert_eq!(args.log_level, Level::Debug);
        assert!(args.warnings.is_empty());

        let args = Args::parse(["--print-ready-only", "--log-level=error"]);
        assert!(args.print_ready_only);
        assert_eq!(args.log_level, Level::Error);
    }

    #[test]
    fn last_log_level_wins() {
        let args = Args::parse(["--log-level=debug", "--log-level=info"]);
        assert_eq!(args.log_level, Level::Info);
    }

    #[test]
    fn unknown_arguments_warn_and_continue() {
        let args = Args::parse(["single", "--log-level=loud", "--poweroff", "--log-level"]);
        assert!(args.poweroff);
        assert_eq!(args.log_level, Level::DEFAULT);
        assert_eq!(args.warnings.len(), 3);
        assert!(args.warnings[0].contains("\"single\""));
        assert!(args.warnings[1].contains("\"loud\""));
        assert!(args.warnings[2].contains("\"--log-level\""));
    }
}

//! Boolean flags as etcdctl's flag library (pflag) parses them: `--flag`
//! alone means true, and `--flag=VALUE` takes any value of Go's
//! `strconv.ParseBool` (`--prefix=false`, `--hex=1`); a value after a space
//! is not the flag's (`--prefix false` is the flag and an argument).

use clap::{Arg, ArgAction};

/// Go's `strconv.ParseBool`, with its error text.
pub fn parse_go_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("strconv.ParseBool: parsing \"{text}\": invalid syntax")),
    }
}

/// Makes an argument a Go-style boolean flag. clap's derive calls any
/// attribute it does not know as a method of `Arg`, so a `bool` field
/// declares one as `#[arg(long = "prev-kv", go_bool_default = false)]`.
pub trait GoBoolFlag {
    /// A Go-style boolean flag that is `default` when absent.
    fn go_bool_default(self, default: bool) -> Self;
}

impl GoBoolFlag for Arg {
    fn go_bool_default(self, default: bool) -> Self {
        self.action(ArgAction::Set)
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true")
            .default_value(if default { "true" } else { "false" })
            .value_parser(parse_go_bool)
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args, Command, FromArgMatches};

    use super::*;

    #[derive(Args, Debug)]
    struct Flags {
        #[arg(long, go_bool_default = false)]
        prefix: bool,
        #[arg(long, go_bool_default = true)]
        wait: bool,
        #[arg(value_name = "KEY")]
        key: Option<String>,
    }

    fn parse(args: &[&str]) -> Result<Flags, clap::Error> {
        let command = Flags::augment_args(Command::new("flags").no_binary_name(true));
        Flags::from_arg_matches(&command.try_get_matches_from(args)?)
    }

    #[test]
    fn flags_take_gos_booleans_after_an_equals_sign_only() {
        let absent = parse(&[]).expect("parses");
        assert!(!absent.prefix && absent.wait);
        assert!(parse(&["--prefix"]).expect("parses").prefix);
        assert!(parse(&["--prefix=T"]).expect("parses").prefix);
        assert!(!parse(&["--wait=0"]).expect("parses").wait);
        let spaced = parse(&["--prefix", "false"]).expect("parses");
        assert!(spaced.prefix);
        assert_eq!(spaced.key.as_deref(), Some("false"));
        let refused = parse(&["--prefix=yes"]).expect_err("not a Go boolean");
        assert!(
            refused
                .to_string()
                .contains("strconv.ParseBool: parsing \"yes\": invalid syntax"),
            "{refused}"
        );
    }
}

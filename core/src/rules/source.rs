//! Where a rule reads a user id or a percentage key from: `header:NAME`, `cookie:NAME`,
//! `arg:NAME` or `var:NAME`, each read through one nginx variable (`$http_x_user_id`,
//! `$cookie_uid`, `$arg_uid`, `$NAME`), so the request path has one way to fetch them all.

use std::fmt;

/// A source's name is at most this long.
pub const MAX_NAME: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Header(String),
    Cookie(String),
    Arg(String),
    Var(String),
}

impl Source {
    /// Parses `kind:name`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Source, String> {
        let Some((kind, name)) = text.split_once(':') else {
            return Err(format!(
                "\"{text}\" is not a source (header:NAME, cookie:NAME, arg:NAME or var:NAME)"
            ));
        };
        let allowed: fn(char) -> bool = match kind {
            "header" => |c| c.is_ascii_alphanumeric() || c == '-' || c == '_',
            "cookie" | "arg" => |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'),
            "var" => |c| c.is_ascii_alphanumeric() || c == '_',
            _ => {
                return Err(format!(
                    "\"{text}\": unknown source kind \"{kind}\" (header, cookie, arg or var)"
                ))
            }
        };
        if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(allowed) {
            return Err(format!("\"{text}\": \"{name}\" is not a valid {kind} name"));
        }
        let name = name.to_string();
        Ok(match kind {
            "header" => Source::Header(name),
            "cookie" => Source::Cookie(name),
            "arg" => Source::Arg(name),
            _ => Source::Var(name),
        })
    }

    /// The nginx variable that holds it.
    pub fn variable(&self) -> String {
        match self {
            Source::Header(name) => format!("http_{}", name.to_ascii_lowercase().replace('-', "_")),
            Source::Cookie(name) => format!("cookie_{name}"),
            Source::Arg(name) => format!("arg_{name}"),
            Source::Var(name) => name.clone(),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Header(name) => write!(f, "header:{name}"),
            Source::Cookie(name) => write!(f, "cookie:{name}"),
            Source::Arg(name) => write!(f, "arg:{name}"),
            Source::Var(name) => write!(f, "var:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_reads_one_variable() {
        let cases = [
            ("header:X-User-Id", "http_x_user_id"),
            ("cookie:uid", "cookie_uid"),
            ("arg:uid", "arg_uid"),
            ("var:geoip2_country_code", "geoip2_country_code"),
        ];
        for (text, variable) in cases {
            let source = Source::parse(text).unwrap();
            assert_eq!(source.variable(), variable);
            assert_eq!(source.to_string(), text);
        }
    }

    #[test]
    fn bad_sources_say_why() {
        assert!(Source::parse("uid")
            .unwrap_err()
            .contains("is not a source"));
        assert!(Source::parse("body:uid")
            .unwrap_err()
            .contains("unknown source kind \"body\""));
        assert!(Source::parse("header:")
            .unwrap_err()
            .contains("not a valid header name"));
        assert!(Source::parse("var:a-b")
            .unwrap_err()
            .contains("not a valid var name"));
        assert!(Source::parse("cookie:a b").is_err());
    }
}

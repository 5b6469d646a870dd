//! How the request path gathers a rule set's inputs at the least cost: headers and cookies are
//! found in one copy of the request's header list (one FFI call, no allocation, however many
//! headers the rules read), args in `$args` (one lookup for all of them), other variables through
//! nginx variables, one lookup each (an nginx variable lookup is ~850 instructions, most of what
//! a rule set costs). Matching follows nginx's own variables: header and cookie names and arg
//! names compare without case, values are as sent (an arg is not unescaped, as `$arg_` is not).

use crate::rules::Source;

/// How one input of a rule set is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    /// The first request header of this lowercase name.
    Header(Vec<u8>),
    /// The first cookie of this name (compared without case, as nginx's `$cookie_` does).
    Cookie(Vec<u8>),
    /// The first query argument of this name in `Plan::variables[i]` (`$args`).
    Arg(Vec<u8>, usize),
    /// The value of `Plan::variables[i]`.
    Variable(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Tells the request path its fetched inputs belong to this plan (unique per compile).
    pub id: u32,
    /// By input of the rule set, in order.
    pub fetch: Vec<Fetch>,
    /// The nginx variables the request path reads, for `Fetch::Variable`.
    pub variables: Vec<String>,
    /// Whether the request path copies the header list.
    pub reads_headers: bool,
    /// The inputs found in the header list: (input index, lowercase header name, is a cookie).
    by_header: Vec<(usize, Vec<u8>, bool)>,
    /// Every input's nginx variable, in order: what an explanation reads (cost is no concern).
    pub all_variables: Vec<String>,
}

/// The variable all arg inputs are read from.
const ARGS: &str = "args";

/// A request header as nginx lists it: the lowercase name, the value.
pub type Header<'a> = (&'a [u8], &'a [u8]);

/// What the request path fetched for a plan, read where it lies (the binding's FFI arrays, or
/// plain slices): nothing is copied on the request path.
pub trait Fetched<'a> {
    fn header_count(&self) -> usize;
    fn header(&self, index: usize) -> Header<'a>;
    /// Whether `header(0..header_count())` is every header of the request, so that a header
    /// missing from the list is one the request does not have.
    fn every_header(&self) -> bool;
    /// The value of `Plan::variables[index]`; `None` when absent.
    fn variable(&self, index: usize) -> Option<&'a [u8]>;
}

/// Fetched inputs held in slices (tests, explanations).
pub struct Slices<'a> {
    pub headers: &'a [Header<'a>],
    pub variables: &'a [Option<&'a [u8]>],
}

impl<'a> Fetched<'a> for Slices<'a> {
    fn header_count(&self) -> usize {
        self.headers.len()
    }
    fn header(&self, index: usize) -> Header<'a> {
        self.headers[index]
    }
    fn every_header(&self) -> bool {
        true
    }
    fn variable(&self, index: usize) -> Option<&'a [u8]> {
        self.variables.get(index).copied().flatten()
    }
}

impl Plan {
    pub fn new(id: u32, sources: &[Source]) -> Plan {
        let mut variables = Vec::new();
        let fetch = sources
            .iter()
            .map(|source| match source {
                Source::Header(name) => Fetch::Header(name.to_ascii_lowercase().into_bytes()),
                Source::Cookie(name) => Fetch::Cookie(name.as_bytes().to_vec()),
                Source::Arg(name) => {
                    let args = match variables.iter().position(|v| v == ARGS) {
                        Some(i) => i,
                        None => {
                            variables.push(ARGS.to_string());
                            variables.len() - 1
                        }
                    };
                    Fetch::Arg(name.as_bytes().to_vec(), args)
                }
                Source::Var(_) => {
                    variables.push(source.variable());
                    Fetch::Variable(variables.len() - 1)
                }
            })
            .collect::<Vec<_>>();
        let by_header: Vec<(usize, Vec<u8>, bool)> = fetch
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match f {
                Fetch::Header(name) => Some((i, name.clone(), false)),
                Fetch::Cookie(name) => Some((i, name.clone(), true)),
                _ => None,
            })
            .collect();
        Plan {
            id,
            reads_headers: !by_header.is_empty(),
            by_header,
            fetch,
            variables,
            all_variables: sources.iter().map(Source::variable).collect(),
        }
    }

    /// The rule set's inputs, in order, into `out` (as long as `fetch`): one pass over the
    /// header list serves every header and cookie input.
    pub fn gather<'a>(&self, fetched: &dyn Fetched<'a>, out: &mut [Option<&'a [u8]>]) {
        for (slot, fetch) in out.iter_mut().zip(&self.fetch) {
            *slot = match fetch {
                Fetch::Variable(i) => fetched.variable(*i),
                Fetch::Arg(name, args) => fetched.variable(*args).and_then(|a| arg_in(a, name)),
                _ => None,
            };
        }
        if self.by_header.is_empty() {
            return;
        }
        for index in 0..fetched.header_count() {
            let (key, value) = fetched.header(index);
            let is_cookie = key == b"cookie";
            for (slot, name, cookie) in &self.by_header {
                if out[*slot].is_some() {
                    continue;
                }
                if *cookie {
                    if is_cookie {
                        out[*slot] = cookie_in(value, name);
                    }
                } else if key == &name[..] {
                    out[*slot] = Some(value);
                }
            }
        }
    }
}

/// The value of query argument `name` in `$args` (`a=1&uid=u22`).
fn arg_in<'a>(args: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    args.split(|&b| b == b'&').find_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        pair[..eq]
            .eq_ignore_ascii_case(name)
            .then(|| &pair[eq + 1..])
    })
}

/// The value of cookie `name` in one `Cookie` header's value (`a=1; uid=u22`).
fn cookie_in<'a>(value: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    value.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        pair[..eq]
            .trim_ascii()
            .eq_ignore_ascii_case(name)
            .then(|| pair[eq + 1..].trim_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(sources: &[&str]) -> Plan {
        let sources: Vec<Source> = sources.iter().map(|s| Source::parse(s).unwrap()).collect();
        Plan::new(7, &sources)
    }

    #[test]
    fn headers_and_cookies_come_from_the_header_list_args_and_variables_from_nginx() {
        let p = plan(&[
            "header:X-User-Id",
            "cookie:uid",
            "arg:uid",
            "var:host",
            "header:X-Gray",
        ]);
        assert_eq!(p.variables, ["args", "host"]);
        assert!(p.reads_headers);
        assert_eq!(
            p.all_variables,
            [
                "http_x_user_id",
                "cookie_uid",
                "arg_uid",
                "host",
                "http_x_gray"
            ]
        );
        let headers: &[Header] = &[
            (b"host", b"example"),
            (b"cookie", b"a=1; UID = u22 ;b=2"),
            (b"x-user-id", b"42"),
            (b"x-user-id", b"43"),
        ];
        let mut out = [None; 5];
        let fetched = Slices {
            headers,
            variables: &[Some(b"a=1&UID=u9&uid=u10"), None],
        };
        p.gather(&fetched, &mut out);
        assert_eq!(
            out,
            [Some(&b"42"[..]), Some(b"u22"), Some(b"u9"), None, None]
        );
        assert_eq!(arg_in(b"uid", b"uid"), None);
        assert_eq!(arg_in(b"x=1&uid=", b"uid"), Some(&b""[..]));
        assert_eq!(plan(&["arg:a", "arg:b"]).variables, ["args"]);
        assert!(!plan(&["arg:uid"]).reads_headers);
    }

    #[test]
    fn cookies_are_found_in_any_cookie_header_and_only_by_their_whole_name() {
        let p = plan(&["cookie:uid", "cookie:x", "cookie:none"]);
        let mut out = [None; 3];
        let two: &[Header] = &[(b"cookie", b"uidx=1; x=uid=2"), (b"cookie", b"uid=3")];
        p.gather(
            &Slices {
                headers: two,
                variables: &[],
            },
            &mut out,
        );
        assert_eq!(out, [Some(&b"3"[..]), Some(b"uid=2"), None]);
        assert_eq!(cookie_in(b"broken; uid", b"uid"), None);
    }
}

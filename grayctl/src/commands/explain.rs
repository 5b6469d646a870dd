//! `grayctl explain`: a request described on the command line, decided offline against what is in
//! Redis now, as a gateway's request path gathers and decides it.

use gray_core::clock::unix_now;
use gray_core::decision::Reason;
use gray_core::plan::{Header, Plan, Slices};
use gray_core::rules::MintedId;

use super::Context;
use crate::cli::ExplainArgs;
use crate::failure::{refused, Failure};

/// The request the command line describes, as the gateway's request path sees it: headers by
/// lowercase name, cookies in one `Cookie` header, args in `$args`, other variables by name.
struct Request {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    variables: Vec<(String, Vec<u8>)>,
}

fn split_pairs(items: &[String], sep: char) -> Result<Vec<(&str, &str)>, Failure> {
    items
        .iter()
        .map(|item| {
            item.split_once(sep)
                .ok_or_else(|| refused(format!("\"{item}\" is not NAME{sep}VALUE")))
        })
        .collect()
}

impl Request {
    fn from_args(args: &ExplainArgs) -> Result<Request, Failure> {
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = split_pairs(&args.headers, ':')?
            .into_iter()
            .map(|(k, v)| {
                (
                    k.trim().to_ascii_lowercase().into_bytes(),
                    v.trim().as_bytes().to_vec(),
                )
            })
            .collect();
        let cookies = split_pairs(&args.cookies, '=')?;
        if !cookies.is_empty() {
            let joined: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            headers.push((b"cookie".to_vec(), joined.join("; ").into_bytes()));
        }
        let mut variables: Vec<(String, Vec<u8>)> = split_pairs(&args.vars, '=')?
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        let query = split_pairs(&args.args, '=')?;
        if !query.is_empty() {
            let joined: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            variables.push(("args".into(), joined.join("&").into_bytes()));
        }
        Ok(Request { headers, variables })
    }

    /// The header list and the plan's variables, as the request path hands them to the plan.
    fn fetched<'a>(&'a self, plan: &Plan) -> (Vec<Header<'a>>, Vec<Option<&'a [u8]>>) {
        let headers: Vec<Header<'a>> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        let variables: Vec<Option<&'a [u8]>> = plan
            .variables
            .iter()
            .map(|name| {
                self.variables
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_slice())
            })
            .collect();
        (headers, variables)
    }
}

/// An anonymous id, as a gateway would mint one for a request without it.
fn new_id() -> MintedId {
    let mut bits = [0u8; 16];
    // Without the OS's randomness the explanation still holds: only this id's bucket is fixed.
    let _ = getrandom::getrandom(&mut bits);
    MintedId::from_bits(u128::from_le_bytes(bits))
}

pub(super) fn explain(ctx: &Context, args: &ExplainArgs) -> Result<(), Failure> {
    ctx.rule_set_key(&args.set)?;
    let snapshot = ctx.store()?.snapshot(args.set.name.as_deref())?;
    let request = Request::from_args(args)?;
    let (headers, variables) = match snapshot.active(0) {
        Some(active) => request.fetched(&active.compiled.plan),
        None => (Vec::new(), Vec::new()),
    };
    let mut values = Vec::new();
    if let Some(active) = snapshot.active(0) {
        // The rule set's inputs, gathered by its plan as the gateway gathers them.
        values.resize(active.compiled.rules.inputs.len(), None);
        let fetched = Slices {
            headers: &headers,
            variables: &variables,
        };
        active.compiled.plan.gather(&fetched, &mut values);
    }
    let (target, reason) = snapshot.decide(
        0,
        args.ip.as_bytes(),
        (None, None),
        &values,
        unix_now(),
        &new_id,
    );
    if let Reason::BadPeerAddress(_) = reason {
        return Err(refused(format!("--ip {}: {reason}", args.ip)));
    }
    let details = snapshot.explain(target, &reason);
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string(&details).expect("an explanation is plain data")
        );
        return Ok(());
    }
    println!("target: {}", details.target);
    if let Some(rule) = &details.rule {
        println!("rule:   {rule}");
    }
    println!("why:    {}", details.reason);
    if let Some(lane) = &details.lane {
        println!("lane:   {lane}");
    }
    if let (Some(bucket), Some(threshold)) = (details.bucket, details.threshold) {
        println!(
            "bucket: {bucket} ({} threshold {threshold})",
            if u64::from(bucket) < threshold {
                "under"
            } else {
                "not under"
            }
        );
    }
    Ok(())
}

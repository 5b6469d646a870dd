//! `top`: the gateways and a rule set's rollout plan, as `status` and `rollout status` show
//! them, redrawn every second from Redis until interrupted. A Redis that cannot be read is said
//! on the screen, and read again the next second.

use std::io::Write;
use std::thread;
use std::time::{Duration, SystemTime};

use super::{fleet, rollout, Context};
use crate::cli::SetName;
use crate::failure::{written, Failure};
use crate::store::Store;

const EVERY: Duration = Duration::from_secs(1);
/// Home, then clear the screen: the next frame replaces the last.
const CLEAR: &[u8] = b"\x1b[H\x1b[2J";

pub(super) fn top(ctx: &Context, set: &SetName) -> Result<(), Failure> {
    let key = ctx.rule_set_key(set)?;
    let mut store: Option<Store> = None;
    loop {
        let mut frame = Vec::new();
        if let Err(e) = draw(&mut frame, ctx, &key, &mut store) {
            writeln!(frame, "\ngrayctl: {e}; trying again").map_err(written)?;
        }
        writeln!(
            frame,
            "\n{} - again every {} s - Ctrl-C quits",
            humantime::format_rfc3339_seconds(SystemTime::now()),
            EVERY.as_secs()
        )
        .map_err(written)?;
        let mut out = std::io::stdout().lock();
        out.write_all(CLEAR)
            .and_then(|()| out.write_all(&frame))
            .and_then(|()| out.flush())
            .map_err(written)?;
        drop(out);
        thread::sleep(EVERY);
    }
}

/// The views of one frame into `frame`, through `store`, opened if it is not; a store that
/// failed is dropped, to be opened again for the next frame.
fn draw(
    frame: &mut Vec<u8>,
    ctx: &Context,
    key: &str,
    store: &mut Option<Store>,
) -> Result<(), Failure> {
    let open = match store {
        Some(open) => open,
        None => store.insert(ctx.store()?),
    };
    let drawn = fleet::write_now(frame, ctx, open)
        .and_then(|()| writeln!(frame).map_err(written))
        .and_then(|()| rollout::write_now(frame, open, key));
    if drawn.is_err() {
        *store = None;
    }
    drawn
}

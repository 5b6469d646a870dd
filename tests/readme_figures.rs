//! The README's measured figures are the last runs' that measured them: the block a report marks
//! as quoted (`make bench`: bench/RESULTS.md, `make chaos`: chaos/RESULTS.md) stands in the
//! README unchanged. The runners put it there (scripts/harness.py, quote_in_readme); this fails a
//! hand edit of either side, or a report committed without its README.

use std::fs;
use std::path::Path;

/// The block between `make NAME`'s markers, markers included.
fn quoted<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let begin = format!("<!-- quoted by README.md from the last `make {name}`: begin -->");
    let end = format!("<!-- quoted by README.md from the last `make {name}`: end -->");
    let start = text.find(&begin)?;
    let stop = text[start..].find(&end)? + start + end.len();
    Some(&text[start..stop])
}

#[test]
fn the_readme_quotes_the_last_bench_and_chaos_runs_as_their_reports_have_them() {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(top.join("README.md")).unwrap();
    for (name, report) in [("bench", "bench/RESULTS.md"), ("chaos", "chaos/RESULTS.md")] {
        let report = fs::read_to_string(top.join(report)).unwrap();
        let in_report = quoted(&report, name)
            .unwrap_or_else(|| panic!("{name}: no quoted block in the report"));
        let in_readme =
            quoted(&readme, name).unwrap_or_else(|| panic!("{name}: no quoted block in README.md"));
        assert_eq!(
            in_readme, in_report,
            "README.md's `make {name}` figures are not the report's"
        );
        assert!(
            in_report.contains("Run ") && in_report.contains(" of commit "),
            "{name}: the run is not named"
        );
    }
}

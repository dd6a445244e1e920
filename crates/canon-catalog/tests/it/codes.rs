//! docs/lints.md lists exactly the codes the code reports.

use std::collections::BTreeSet;

use crate::repo;

#[test]
fn docs_list_every_code_and_nothing_else() {
    let doc = std::fs::read_to_string(repo().join("docs/lints.md")).unwrap();
    // Codes are the first cell of table rows: "| `naming-convention` | ...".
    let documented: BTreeSet<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(code, _)| code))
        .collect();
    let reported: BTreeSet<&str> = canon_catalog::code::ALL
        .iter()
        .copied()
        .chain(canon_envelope::ErrorCode::ALL.iter().map(|c| c.as_str()))
        .collect();
    let undocumented: Vec<_> = reported.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&reported).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "not in docs/lints.md: {undocumented:?}; in the docs but never reported: {stale:?}"
    );
    assert_eq!(
        reported.len(),
        canon_catalog::code::ALL.len() + canon_envelope::ErrorCode::ALL.len(),
        "a code is used twice"
    );
}

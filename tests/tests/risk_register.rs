//! The risk register names, for every risk, the tests that prove its mitigation. This test reads
//! the register and fails if a listed test does not exist in the workspace, so a renamed or
//! deleted test cannot leave a mitigation claimed but unproven.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// Every Rust source file of the workspace, build output left out.
fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                sources(&path, found);
            }
        } else if name.ends_with(".rs") {
            found.push(path);
        }
    }
}

/// Names of every function defined in the workspace (`fn name`), tests included.
fn defined_functions() -> BTreeSet<String> {
    let mut files = Vec::new();
    sources(&workspace(), &mut files);
    let mut names = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (at, _) in text.match_indices("fn ") {
            let rest = &text[at + 3..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

struct Row {
    id: String,
    cells: Vec<String>,
}

/// The register's risk rows: table lines whose first cell is an id such as `R01`.
fn rows(register: &str) -> Vec<Row> {
    register
        .lines()
        .filter(|l| l.starts_with("| R"))
        .map(|line| {
            let cells: Vec<String> = line
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect();
            Row {
                id: cells[0].clone(),
                cells,
            }
        })
        .collect()
}

/// The names in backticks of one cell.
fn quoted(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

const COLUMNS: usize = 9;
const TESTS: usize = 5;
const REVIEW: usize = 8;

#[test]
fn every_test_the_risk_register_names_exists() {
    let path = workspace().join("docs/security/risk-register.md");
    let register = std::fs::read_to_string(&path).expect("the risk register exists");
    let rows = rows(&register);
    assert!(rows.len() >= 10, "the register lists {} risks", rows.len());
    let defined = defined_functions();
    let mut missing = Vec::new();
    for row in &rows {
        assert_eq!(
            row.cells.len(),
            COLUMNS,
            "{}: id, risk, likelihood, impact, mitigation, tests, residual risk, owner, review",
            row.id
        );
        assert!(
            row.cells.iter().all(|c| !c.is_empty()),
            "{}: every cell is filled",
            row.id
        );
        let review = &row.cells[REVIEW];
        let date_like = review.len() == 10
            && review.char_indices().all(|(i, c)| {
                if i == 4 || i == 7 {
                    c == '-'
                } else {
                    c.is_ascii_digit()
                }
            });
        assert!(
            date_like,
            "{}: review date {review:?} is YYYY-MM-DD",
            row.id
        );
        let tests = quoted(&row.cells[TESTS]);
        assert!(!tests.is_empty(), "{}: names at least one test", row.id);
        for test in tests {
            if !defined.contains(&test) {
                missing.push(format!("{}: {test}", row.id));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "tests named in the register that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_reader_finds_names_and_misses_none() {
    let register = "| R01 | a | low | high | m | `x_y`, `z` | r | role | 2027-03-01 |\n| x |";
    let rows = rows(register);
    assert_eq!(rows.len(), 1);
    assert_eq!(quoted(&rows[0].cells[TESTS]), vec!["x_y", "z"]);
    assert!(defined_functions().contains("the_reader_finds_names_and_misses_none"));
    assert!(!defined_functions().contains("a_test_nobody_wrote_zz9"));
}

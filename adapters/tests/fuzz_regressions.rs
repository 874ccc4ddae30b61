//! The fuzz targets' checks, on stable: every file under `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` goes through the same check the fuzz target runs, so a crash
//! the fuzzer found and minimized stays fixed; then each check takes arbitrary bytes, and
//! random edits of its seeds, from proptest.

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

#[allow(unreachable_pub, dead_code)]
#[path = "../../fuzz/src/lib.rs"]
mod checks;

use checks::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted; none when the folder does not exist.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable folder entry").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

fn check_of(target: &str) -> checks::Check {
    TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, check)| *check)
        .unwrap_or_else(|| panic!("no fuzz target named {target}"))
}

/// Runs `target`'s check on every file of `fuzz/<kind>/<target>/`, naming the file that fails.
fn replay(kind: &str, target: &str) -> usize {
    let check = check_of(target);
    let files = inputs(kind, target);
    for file in &files {
        let data = fs::read(file).expect("a readable input file");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its check", file.display());
    }
    files.len()
}

#[test]
fn every_target_has_a_seed_corpus_and_passes_it() {
    for (target, _) in TARGETS {
        let seeds = replay("corpus", target);
        assert!(seeds >= 5, "fuzz/corpus/{target} holds {seeds} seeds");
    }
}

#[test]
fn every_minimized_crash_stays_fixed() {
    for (target, _) in TARGETS {
        replay("regressions", target);
    }
}

#[test]
fn the_corpus_and_regressions_name_only_known_targets() {
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a readable folder entry").path();
            if path.is_dir() {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                check_of(name);
            }
        }
    }
}

/// Every seed of every target, as (target index, bytes).
fn seeds() -> Vec<(usize, Vec<u8>)> {
    TARGETS
        .iter()
        .enumerate()
        .flat_map(|(i, (target, _))| {
            inputs("corpus", target)
                .into_iter()
                .map(move |file| (i, fs::read(file).expect("a readable seed")))
        })
        .collect()
}

/// One edit of a seed: overwrite, insert or remove a byte at a position.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Remove),
    ]
}

fn apply(mut data: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        match *edit {
            Edit::Set(i, b) if !data.is_empty() => {
                let at = i % data.len();
                data[at] = b;
            }
            Edit::Insert(i, b) => data.insert(i % (data.len() + 1), b),
            Edit::Remove(i) if !data.is_empty() => {
                let at = i % data.len();
                data.remove(at);
            }
            _ => {}
        }
    }
    data
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn webhook_signature_takes_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        checks::webhook_signature(&data);
    }

    #[test]
    fn webhook_signature_takes_any_header_text(
        id in "[ -~]{0,40}",
        ts in "[0-9+.e -]{0,15}",
        sig in "(v1,|v1a,|v2,| )?[A-Za-z0-9+/=, ]{0,90}",
        body in ".{0,80}",
    ) {
        checks::webhook_signature(format!("{id}\n{ts}\n{sig}\n{body}").as_bytes());
    }

    #[test]
    fn webhook_intake_takes_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        checks::webhook_intake(&data);
    }

    #[test]
    fn webhook_intake_takes_any_incident_shape(
        sys_id in "[0-9a-fA-F]{30,33}", number in "[A-Z]{0,4}[0-9]{0,8}", nested in any::<bool>(),
    ) {
        let fields = serde_json::json!({"sys_id": sys_id, "number": number});
        let body = if nested { serde_json::json!({"incident": fields}) } else { fields };
        checks::webhook_intake(body.to_string().as_bytes());
    }

    #[test]
    fn slack_signature_takes_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        checks::slack_signature(&data);
    }

    #[test]
    fn stripe_signature_takes_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        checks::stripe_signature(&data);
    }

    #[test]
    fn stripe_signature_takes_any_header_shape(
        parts in proptest::collection::vec("(t|v1|v0|x)=[0-9a-f]{0,70}", 0..6),
    ) {
        let data = format!("{}\n{{\"id\":\"evt\"}}", parts.join(","));
        checks::stripe_signature(data.as_bytes());
    }

    #[test]
    fn slack_interaction_takes_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        checks::slack_interaction(&data);
    }

    #[test]
    fn slack_interaction_takes_any_form_text(form in "(payload=)?[!-~]{0,300}") {
        checks::slack_interaction(form.as_bytes());
    }

    #[test]
    fn llm_replies_take_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        checks::llm_openai(&data);
        checks::llm_anthropic(&data);
        checks::llm_proposal(&data);
    }

    #[test]
    fn llm_proposal_takes_any_text(text in ".{0,300}") {
        checks::llm_proposal(text.as_bytes());
    }

    #[test]
    fn servicenow_replies_take_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        checks::servicenow_record(&data);
        checks::servicenow_error(&data);
    }

    #[test]
    fn every_check_takes_random_edits_of_its_seeds(
        pick in any::<proptest::sample::Index>(),
        edits in proptest::collection::vec(edit(), 1..8),
    ) {
        let seeds = seeds();
        let (target, seed) = &seeds[pick.index(seeds.len())];
        (TARGETS[*target].1)(&apply(seed.clone(), &edits));
    }
}

//! Scores CVSS vectors for the release gate.
//!
//! Reads one CVSS vector string per line on stdin (`CVSS:3.0/…`, `CVSS:3.1/…`, `CVSS:4.0/…`, or
//! a bare CVSS 2.0 vector) and writes one line per input line on stdout:
//! `ok<TAB><base score><TAB><severity>` or `error<TAB><why>`. An input line longer than 512
//! bytes is answered with an error, not parsed. Exit status is 0 unless stdin cannot be read.

use std::io::{self, BufRead, Write};
use std::str::FromStr;

/// Longest vector accepted; the longest valid CVSS 4.0 vector is well under this.
const MAX_VECTOR: usize = 512;

fn score_line(line: &str) -> String {
    let vector = line.trim();
    if vector.len() > MAX_VECTOR {
        return format!("error\tvector longer than {MAX_VECTOR} bytes");
    }
    if vector.is_empty() {
        return "error\tempty vector".to_owned();
    }
    match cvss::Cvss::from_str(vector) {
        Ok(parsed) => format!("ok\t{:.1}\t{}", parsed.score(), parsed.severity().as_str()),
        Err(err) => format!("error\t{}", err.to_string().replace(['\t', '\n'], " ")),
    }
}

fn main() -> io::Result<()> {
    let stdin = io::stdin();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for line in stdin.lock().split(b'\n') {
        let line = line?;
        let answer = match std::str::from_utf8(&line) {
            Ok(text) => score_line(text),
            Err(_) => "error\tvector is not UTF-8".to_owned(),
        };
        writeln!(out, "{answer}")?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::score_line;

    #[test]
    fn scores_v3_vectors() {
        assert_eq!(
            score_line("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"),
            "ok\t9.8\tcritical"
        );
        assert_eq!(
            score_line("CVSS:3.1/AV:L/AC:H/PR:L/UI:R/S:U/C:L/I:N/A:N"),
            "ok\t2.2\tlow"
        );
    }

    #[test]
    fn scores_v4_vectors() {
        let answer = score_line("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N");
        assert_eq!(answer, "ok\t9.3\tcritical");
    }

    #[test]
    fn malformed_empty_and_oversized_vectors_are_errors() {
        for bad in [
            "",
            "CVSS:3.1/AV:X",
            "CVSS:9.9/AV:N",
            "not a vector",
            "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H/AV:N",
        ] {
            assert!(score_line(bad).starts_with("error\t"), "{bad:?} was scored");
        }
        let long = format!("CVSS:3.1/{}", "AV:N/".repeat(200));
        assert_eq!(score_line(&long), "error\tvector longer than 512 bytes");
        assert!(!score_line("CVSS:3.1/AV:\tN").contains("\t\t"));
    }
}

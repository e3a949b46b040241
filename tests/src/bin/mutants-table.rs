//! mutants-table: reads the outcomes of `cargo mutants` runs (`packaging/mutants.sh`) and
//! prints, per module, how many mutants the tests killed and which survived, against the
//! targets: none surviving in the shim's process state machine, reaper and CRI log writer; at
//! most 10% elsewhere, every survivor explained in `packaging/mutants-accepted.txt`. Exits
//! non-zero when a target is missed.
//!
//! usage: mutants-table [--list-missed] --accepted FILE --current FILE OUTCOMES.json...
//!
//! A later outcomes file replaces what earlier ones said about the mutants it tested: a re-run
//! after new tests supersedes the whole run's outcome for those mutants. `--current` names the
//! mutants of the source as it is now (`cargo mutants --list`): outcomes of mutants that no
//! longer exist are dropped, and a mutant no run has tested yet counts against the target.
//! `--list-missed` prints only the names of the mutants that survive or are untested, one per
//! line, for a re-run of just those.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::ExitCode;

use serde_json::Value;

/// Most survivors, as a share of the mutants tested, outside the modules that allow none.
const SURVIVOR_SHARE: f64 = 0.10;

/// Modules that must let no mutant survive.
const NO_SURVIVORS: &[&str] = &[
    "shim/src/task/state.rs",
    "shim/src/reaper.rs",
    "shim/src/crilog.rs",
];

/// What the tests did to the mutants of one module.
#[derive(Debug, Default)]
struct Module {
    caught: usize,
    timeout: usize,
    unviable: usize,
    missed: Vec<String>,
    /// Mutants of the current source that no run has tested.
    untested: Vec<String>,
}

impl Module {
    fn tested(&self) -> usize {
        self.caught + self.timeout + self.missed.len()
    }

    fn share(&self) -> f64 {
        if self.tested() == 0 {
            0.0
        } else {
            self.missed.len() as f64 / self.tested() as f64
        }
    }
}

/// Survivors judged harmless: `<mutant name> | <why>` per line, `#` comments.
fn accepted(path: &str) -> Result<BTreeMap<String, String>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("read {path}: {e}"))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let (name, why) = line.rsplit_once(" | ")?;
            Some((name.trim().to_string(), why.trim().to_string()))
        })
        .collect())
}

/// What happened to one mutant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Caught,
    Missed,
    Timeout,
    Unviable,
}

/// The outcomes of one `cargo mutants` run: (module, mutant name) → outcome.
fn read_outcomes(path: &str) -> Result<BTreeMap<(String, String), Outcome>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("read {path}: {e}"))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| format!("parse {path}: {e}"))?;
    let outcomes = json["outcomes"]
        .as_array()
        .ok_or_else(|| format!("{path}: no outcomes"))?;
    let mut run = BTreeMap::new();
    for outcome in outcomes {
        let Some(mutant) = outcome["scenario"].get("Mutant") else {
            // The unmutated baseline: it must have passed, or nothing here means anything.
            if outcome["summary"] != "Success" {
                return Err(format!("{path}: the unmutated baseline failed"));
            }
            continue;
        };
        let file = mutant["file"].as_str().unwrap_or("?").to_string();
        let name = mutant["name"].as_str().unwrap_or("?").to_string();
        let result = match outcome["summary"].as_str() {
            Some("CaughtMutant") => Outcome::Caught,
            Some("MissedMutant") => Outcome::Missed,
            Some("Timeout") => Outcome::Timeout,
            Some("Unviable") => Outcome::Unviable,
            other => return Err(format!("{path}: {name}: unexpected outcome {other:?}")),
        };
        run.insert((file, name), result);
    }
    Ok(run)
}

/// The outcomes counted per module, against the mutants of the current source.
fn by_module(
    outcomes: &BTreeMap<(String, String), Outcome>,
    current: &BTreeSet<String>,
) -> BTreeMap<String, Module> {
    let mut modules = BTreeMap::<String, Module>::new();
    let tested: BTreeSet<&String> = outcomes.keys().map(|(_, name)| name).collect();
    for name in current.iter().filter(|name| !tested.contains(name)) {
        let file = name.split(':').next().unwrap_or("?").to_string();
        modules.entry(file).or_default().untested.push(name.clone());
    }
    for ((file, name), outcome) in outcomes {
        if !current.contains(name) {
            continue; // a mutant of code that has changed since
        }
        let module = modules.entry(file.clone()).or_default();
        match outcome {
            Outcome::Caught => module.caught += 1,
            Outcome::Missed => module.missed.push(name.clone()),
            Outcome::Timeout => module.timeout += 1,
            Outcome::Unviable => module.unviable += 1,
        }
    }
    modules
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut accepted_path = None;
    let mut list_missed = false;
    let mut current_path = None;
    let mut outcome_paths = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--accepted" => accepted_path = args.next(),
            "--list-missed" => list_missed = true,
            "--current" => current_path = args.next(),
            _ => outcome_paths.push(arg),
        }
    }
    let (Some(accepted_path), Some(current_path), false) =
        (accepted_path, current_path, outcome_paths.is_empty())
    else {
        eprintln!(
            "usage: mutants-table [--list-missed] --accepted FILE --current FILE OUTCOMES.json..."
        );
        return ExitCode::from(2);
    };
    let current: BTreeSet<String> = match fs::read_to_string(&current_path) {
        Ok(text) => text.lines().map(str::to_string).collect(),
        Err(e) => {
            eprintln!("mutants-table: read {current_path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let accepted = match accepted(&accepted_path) {
        Ok(accepted) => accepted,
        Err(e) => {
            eprintln!("mutants-table: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut outcomes = BTreeMap::new();
    for path in &outcome_paths {
        match read_outcomes(path) {
            Ok(run) => outcomes.extend(run),
            Err(e) => {
                eprintln!("mutants-table: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let modules = by_module(&outcomes, &current);
    if list_missed {
        for name in modules
            .values()
            .flat_map(|m| m.missed.iter().chain(&m.untested))
        {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }

    println!(
        "{:<40} {:>7} {:>7} {:>8} {:>7} {:>9} {:>9}   target",
        "module", "tested", "caught", "timeout", "missed", "survived", "untested"
    );
    let mut all_met = true;
    let mut listed = Vec::new();
    for (file, module) in &modules {
        let strict = NO_SURVIVORS.contains(&file.as_str());
        let unexplained = module
            .missed
            .iter()
            .filter(|name| !accepted.contains_key(*name))
            .count();
        let met = module.untested.is_empty()
            && if strict {
                module.missed.is_empty()
            } else {
                module.share() <= SURVIVOR_SHARE && unexplained == 0
            };
        all_met &= met;
        println!(
            "{:<40} {:>7} {:>7} {:>8} {:>7} {:>8.1}% {:>9}   {:<28} {}",
            file,
            module.tested(),
            module.caught,
            module.timeout,
            module.missed.len(),
            module.share() * 100.0,
            module.untested.len(),
            if strict {
                "none may survive".to_string()
            } else {
                format!("≤ {:.0}%, each explained", SURVIVOR_SHARE * 100.0)
            },
            if met { "met" } else { "MISSED" }
        );
        for name in &module.missed {
            listed.push(match accepted.get(name) {
                Some(why) => format!("  {name}\n      harmless: {why}"),
                None => format!("  {name}\n      UNEXPLAINED"),
            });
        }
    }
    let unviable: usize = modules.values().map(|m| m.unviable).sum();
    println!("({unviable} mutants did not compile and are not counted)");
    if !listed.is_empty() {
        println!("\nsurvivors:");
        for line in listed {
            println!("{line}");
        }
    }
    if all_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(dir: &std::path::Path, name: &str, results: &[(&str, &str)]) -> String {
        let outcomes: Vec<Value> = std::iter::once(serde_json::json!({
            "scenario": "Baseline", "summary": "Success"
        }))
        .chain(results.iter().enumerate().map(|(i, (file, summary))| {
            serde_json::json!({
                "scenario": {"Mutant": {"file": file, "name": format!("{file}:{i}")}},
                "summary": summary,
            })
        }))
        .collect();
        let path = dir.join(name);
        fs::write(
            &path,
            serde_json::json!({ "outcomes": outcomes }).to_string(),
        )
        .unwrap();
        path.display().to_string()
    }

    #[test]
    fn a_later_run_replaces_the_outcomes_of_the_mutants_it_tested() {
        let dir = tempfile::tempdir().unwrap();
        let whole = outcomes(
            dir.path(),
            "whole.json",
            &[
                ("a.rs", "MissedMutant"),
                ("a.rs", "CaughtMutant"),
                ("b.rs", "Timeout"),
            ],
        );
        // The re-run tested only the first mutant (a.rs:0) again.
        let rerun = outcomes(dir.path(), "rerun.json", &[("a.rs", "CaughtMutant")]);
        let current: BTreeSet<String> = ["a.rs:0", "a.rs:1", "b.rs:2", "c.rs:9"]
            .map(String::from)
            .into();
        let mut all = read_outcomes(&whole).unwrap();
        assert_eq!(by_module(&all, &current)["a.rs"].missed, ["a.rs:0"]);
        all.extend(read_outcomes(&rerun).unwrap());
        let modules = by_module(&all, &current);
        assert_eq!(
            (modules["a.rs"].caught, modules["a.rs"].missed.len()),
            (2, 0)
        );
        assert_eq!(
            modules["b.rs"].timeout, 1,
            "a mutant not re-run keeps its outcome"
        );
        assert_eq!(modules["c.rs"].untested, ["c.rs:9"], "no run tested it yet");
        // A mutant of code that changed since the run no longer counts.
        let now: BTreeSet<String> = ["a.rs:1"].map(String::from).into();
        let modules = by_module(&all, &now);
        assert_eq!(
            (modules["a.rs"].tested(), modules.contains_key("b.rs")),
            (1, false)
        );
    }
}

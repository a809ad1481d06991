//! The audit's report: a table of every rule with its count of violations, the offending ids
//! (a bounded number per rule), and one summary line.

use std::fmt::Write as _;

use crate::checks::{Findings, Violation};

/// Offending ids listed per rule; the rest are counted.
pub const LISTED_PER_RULE_MAX: usize = 20;

/// The whole report as text.
pub fn render(findings: &Findings) -> String {
    let mut out = String::new();
    let payments: usize = findings.payments.values().sum();
    let by_status: Vec<String> = findings.payments.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let _ = writeln!(
        out,
        "checked: {} wallets, {payments} payments ({}), {} results, {} provider charges, {} fired timeouts",
        findings.wallets,
        by_status.join(", "),
        findings.results,
        findings.provider_checked,
        findings.timeouts
    );
    let _ = writeln!(
        out,
        "money:   deposited {}, completed debits {}, available {}, reserved {}",
        findings.deposited, findings.debited, findings.available, findings.reserved
    );
    if !findings.poison.is_empty() {
        let skipped: Vec<String> = findings.poison.iter().map(|(t, n)| format!("{n} on {t}")).collect();
        let _ = writeln!(
            out,
            "poison:  {} (not their contract; the consumers dead-letter them)",
            skipped.join(", ")
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| {:<28} | {:>10} |", "rule", "violations");
    let _ = writeln!(out, "|{:-<30}|{:->12}|", "", "");
    for rule in Violation::RULES {
        let count = findings.violations.iter().filter(|v| v.rule() == rule).count();
        let _ = writeln!(out, "| {rule:<28} | {count:>10} |");
    }
    for rule in Violation::RULES {
        let broken: Vec<&Violation> = findings.violations.iter().filter(|v| v.rule() == rule).collect();
        if broken.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{rule}:");
        for v in broken.iter().take(LISTED_PER_RULE_MAX) {
            let _ = writeln!(out, "  {v}");
        }
        if broken.len() > LISTED_PER_RULE_MAX {
            let _ = writeln!(out, "  … and {} more", broken.len() - LISTED_PER_RULE_MAX);
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", summary(findings));
    out
}

/// One line: clean, or how many violations of how many rules.
pub fn summary(findings: &Findings) -> String {
    let payments: usize = findings.payments.values().sum();
    if findings.clean() {
        return format!(
            "audit: clean — {} wallets, {payments} payments, every invariant holds",
            findings.wallets
        );
    }
    let mut rules: Vec<&str> = findings.violations.iter().map(Violation::rule).collect();
    rules.sort_unstable();
    rules.dedup();
    format!(
        "audit: {} violations of {} rules ({}) over {} wallets, {payments} payments",
        findings.violations.len(),
        rules.len(),
        rules.join(", "),
        findings.wallets
    )
}

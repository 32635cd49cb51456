//! Deciding: one pure function from what is known about one app to what the agent does with it.
//! No I/O, no state, no clock: every input is an argument, so the whole table is tested below and
//! any thread holding the published rule set (the core loop today, an exec gate next) reaches
//! the same decision.
//!
//! Two rules live here and nowhere else:
//! - **Move first, hash after.** When the app's hash is not known yet and the verdict already
//!   acts regardless of any hash (no `except` on sha256 in the rule that matched), the decision is
//!   to act at once; the hash is taken afterwards, for the evidence. Any other case asks for the
//!   hash first ([`Decision::NeedHash`]).
//! - **A hash can only confirm or strengthen a verdict** ([`after_hash`]): the verdict reached
//!   once the hash is known replaces the earlier one only if it is at least as severe.
//!
//! The action cap: a policy update whose acts (file quarantines and package removals together)
//! exceed `max_actions_per_update` acts on none of them ([`within_cap`]); those apps are "held"
//! until `embargoctl confirm`, while apps that arrive later are decided normally.
//! Nothing here must flip the configured mode to hold actions back.

use embargo_policy::matcher::Verdict;
use embargo_policy::rules::Action;

use crate::config::Mode;

/// Everything the decision depends on for one app.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The policy's verdict on what is known of the app (`None`: no rule matches).
    pub verdict: Option<&'a Verdict>,
    /// Whether a known hash could lift the verdict (the matched rule has an `except` on sha256).
    pub except_by_hash: bool,
    /// Whether the app's hash is known (packages: always; their rules do not hash files).
    pub hash_known: bool,
    pub mode: Mode,
    /// An admin restored this inode from quarantine under the current policy.
    pub exempt: bool,
    /// Held back by a policy update over the action cap, until `embargoctl confirm`.
    pub held: bool,
    /// Why this app must never be acted on (Essential package, the agent itself, …).
    pub protected: Option<&'a str>,
}

/// What to do with one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do (no rule matches, or an admin exempted it).
    Allow,
    /// Read the whole file for its hash, then decide again with `hash_known`.
    NeedHash,
    /// Record the verdict, change nothing (audit rules, monitor mode).
    Audit,
    /// A rule acts on it but it must never be touched.
    Protected(String),
    /// A rule acts on it, but it belongs to a policy update over the action cap.
    Hold,
    /// Quarantine or remove it now.
    Act(Action),
}

/// Decides what to do with one app. Pure.
pub fn decide(i: &Input<'_>) -> Decision {
    let d = match i.verdict {
        None => Decision::Allow,
        Some(_) if i.exempt => Decision::Allow,
        Some(v) if i.mode == Mode::Monitor || v.action == Action::Audit => Decision::Audit,
        Some(_) if i.protected.is_some() => Decision::Protected(i.protected.unwrap_or_default().to_owned()),
        Some(_) if i.held => Decision::Hold,
        Some(v) => Decision::Act(v.action),
    };
    // Move first, hash after: only an act that no hash can lift goes ahead without the hash.
    let acts_regardless_of_hash = matches!(d, Decision::Act(_)) && !i.except_by_hash;
    if !i.hash_known && !acts_regardless_of_hash {
        return Decision::NeedHash;
    }
    d
}

/// The verdict once the hash is known, for an app that was acted on before it was hashed: the
/// new verdict counts only if it is at least as severe, so knowing the hash confirms or
/// strengthens what was done and never weakens it.
pub fn after_hash(before: Verdict, with_hash: Option<Verdict>) -> Verdict {
    with_hash.filter(|v| v.action >= before.action).unwrap_or(before)
}

/// Whether a policy update that would act on `acts` apps (file quarantines and package removals
/// together) may act at once. Over the cap, it acts on none of them until confirmed.
pub fn within_cap(acts: usize, cap: usize) -> bool {
    acts <= cap
}

#[cfg(test)]
mod tests {
    use super::*;
    use embargo_policy::matcher::Strength;

    fn verdict(action: Action) -> Verdict {
        Verdict { rule: "r".into(), action, strength: Strength::Strong, description: String::new() }
    }

    /// Every combination of the inputs, against a table written from the rules above.
    #[test]
    fn the_whole_table() {
        let actions = [None, Some(Action::Audit), Some(Action::Quarantine), Some(Action::Remove)];
        let mut rows = 0;
        for action in actions {
            let v = action.map(verdict);
            for except_by_hash in [false, true] {
                for hash_known in [false, true] {
                    for mode in [Mode::Enforce, Mode::Monitor] {
                        for exempt in [false, true] {
                            for held in [false, true] {
                                for protected in [None, Some("essential")] {
                                    let i = Input {
                                        verdict: v.as_ref(),
                                        except_by_hash,
                                        hash_known,
                                        mode,
                                        exempt,
                                        held,
                                        protected,
                                    };
                                    let want =
                                        expected(action, except_by_hash, hash_known, mode, exempt, held, protected);
                                    assert_eq!(decide(&i), want, "{i:?}");
                                    rows += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(rows, 4 * 2 * 2 * 2 * 2 * 2 * 2);
    }

    /// The table, spelled as cases rather than as the function's structure.
    fn expected(
        action: Option<Action>,
        except_by_hash: bool,
        hash_known: bool,
        mode: Mode,
        exempt: bool,
        held: bool,
        protected: Option<&str>,
    ) -> Decision {
        let acting = matches!(action, Some(Action::Quarantine | Action::Remove))
            && mode == Mode::Enforce
            && !exempt
            && protected.is_none()
            && !held;
        if !hash_known && (!acting || except_by_hash) {
            return Decision::NeedHash;
        }
        match action {
            None => Decision::Allow,
            Some(_) if exempt => Decision::Allow,
            Some(Action::Audit) => Decision::Audit,
            Some(_) if mode == Mode::Monitor => Decision::Audit,
            Some(_) if protected.is_some() => Decision::Protected("essential".into()),
            Some(_) if held => Decision::Hold,
            Some(a) => Decision::Act(a),
        }
    }

    #[test]
    fn move_first_hash_after() {
        let v = verdict(Action::Quarantine);
        let base = Input {
            verdict: Some(&v),
            except_by_hash: false,
            hash_known: false,
            mode: Mode::Enforce,
            exempt: false,
            held: false,
            protected: None,
        };
        // A verdict no hash can lift acts without waiting for the hash…
        assert_eq!(decide(&base), Decision::Act(Action::Quarantine));
        // …one a hash could lift waits for it…
        assert_eq!(decide(&Input { except_by_hash: true, ..base }), Decision::NeedHash);
        // …and so does anything that would not act (the hash is evidence, and may bring a rule).
        assert_eq!(decide(&Input { verdict: None, ..base }), Decision::NeedHash);
        assert_eq!(decide(&Input { held: true, ..base }), Decision::NeedHash);
        assert_eq!(decide(&Input { mode: Mode::Monitor, ..base }), Decision::NeedHash);
    }

    #[test]
    fn a_hash_only_confirms_or_strengthens() {
        let q = verdict(Action::Quarantine);
        assert_eq!(after_hash(q.clone(), None), q, "no rule once hashed: the move stands");
        assert_eq!(after_hash(q.clone(), Some(verdict(Action::Audit))), q, "never weakened");
        let mut stronger = verdict(Action::Remove);
        stronger.rule = "by-hash".into();
        assert_eq!(after_hash(q.clone(), Some(stronger.clone())), stronger);
        let mut same = verdict(Action::Quarantine);
        same.rule = "same-severity".into();
        assert_eq!(after_hash(q, Some(same.clone())), same, "an equally severe rule names the evidence");
    }

    #[test]
    fn the_cap_counts_everything_of_one_update() {
        assert!(within_cap(0, 0));
        assert!(within_cap(2, 2));
        assert!(!within_cap(3, 2));
    }
}

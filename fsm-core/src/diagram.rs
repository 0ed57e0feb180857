//! Diagrams drawn from a [`Table`]: Mermaid `stateDiagram-v2` and Graphviz DOT.
//!
//! Names in a table are Rust identifiers, so they need no quoting in either language.

use std::fmt::Write as _;

use crate::table::{DeclaredOn, Policy, StateId, Table, TransitionMeta};

impl Table {
    /// The table as a Mermaid `stateDiagram-v2`: `[*]` into the initial state, one arrow per
    /// transition labelled with its event, terminal states into `[*]`, and a note on each
    /// state that defers, dumps or delegates events it has no transition for.
    ///
    /// With superstates, each is a composite state (`state Active { .. }`) holding its states
    /// and its initial arrow; a transition declared on a superstate is drawn once, from the
    /// superstate, and one declared on the machine once, from a node `any state`. A state's
    /// own transition that hides a superstate's for the same event is drawn from the state,
    /// beside the superstate's: the innermost one is taken.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("stateDiagram-v2\n");
        let _ = writeln!(out, "    [*] --> {}", self.state_name(self.initial()));
        for i in 0..self.superstates().len() {
            if self.superstates()[i].parent().is_none() {
                self.mermaid_composite(&mut out, i, 1);
            }
        }
        if self
            .transitions()
            .iter()
            .any(|t| t.declared_on() == DeclaredOn::AnyState)
        {
            out.push_str("    state \"any state\" as __any\n");
        }
        for t in self.drawn_transitions() {
            let _ = writeln!(
                out,
                "    {} --> {} : {}",
                self.tail(&t),
                self.state_name(t.to),
                self.edge_label(&t)
            );
        }
        for (i, s) in self.states().iter().enumerate() {
            if s.is_terminal() {
                let _ = writeln!(out, "    {} --> [*]", s.name());
            }
            if let Some(note) = self.policy_note(StateId::new(i as u16)) {
                let _ = writeln!(out, "    note right of {} : {}", s.name(), note);
            }
        }
        out
    }

    /// The table as a Graphviz DOT digraph: a point for the start, double circles for
    /// terminal states, one labelled edge per transition, policies in the node label.
    pub fn to_dot(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph {} {{", self.machine());
        out.push_str("    rankdir=LR;\n    node [shape=circle];\n    __start [shape=point];\n");
        let hierarchical = !self.superstates().is_empty();
        if hierarchical {
            out.push_str("    compound=true;\n");
        }
        if self
            .transitions()
            .iter()
            .any(|t| t.declared_on() == DeclaredOn::AnyState)
        {
            out.push_str("    __any [shape=plaintext, label=\"any state\"];\n");
        }
        for i in 0..self.superstates().len() {
            if self.superstates()[i].parent().is_none() {
                self.dot_cluster(&mut out, i, 1);
            }
        }
        for (i, s) in self.states().iter().enumerate() {
            let shape = if s.is_terminal() {
                "doublecircle"
            } else {
                "circle"
            };
            match self.policy_note(StateId::new(i as u16)) {
                Some(note) => {
                    let _ = writeln!(
                        out,
                        "    {} [shape={shape}, label=\"{}\\n({note})\"];",
                        s.name(),
                        s.name()
                    );
                }
                None => {
                    let _ = writeln!(out, "    {} [shape={shape}];", s.name());
                }
            }
        }
        let _ = writeln!(out, "    __start -> {};", self.state_name(self.initial()));
        for t in self.drawn_transitions() {
            match t.declared_on() {
                // From the cluster: an edge from a state inside it, clipped at its border.
                DeclaredOn::Superstate(i) => {
                    let inside = self.superstates().get(i).map_or(t.from, |s| s.initial());
                    let _ = writeln!(
                        out,
                        "    {} -> {} [label=\"{}\", ltail=cluster_{}];",
                        self.state_name(inside),
                        self.state_name(t.to),
                        self.edge_label(&t),
                        self.tail(&t)
                    );
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "    {} -> {} [label=\"{}\"];",
                        self.tail(&t),
                        self.state_name(t.to),
                        self.edge_label(&t)
                    );
                }
            }
        }
        out.push_str("}\n");
        out
    }

    /// The transitions as drawn: each declared on a state as it is; each inherited one once
    /// per (superstate, event, target), or per (event, target) from any state.
    fn drawn_transitions(&self) -> Vec<TransitionMeta> {
        let mut seen: Vec<(DeclaredOn, crate::table::EventId, StateId)> = Vec::new();
        self.transitions()
            .iter()
            .copied()
            .filter(|t| match t.declared_on() {
                DeclaredOn::State => true,
                other => {
                    let key = (other, t.event, t.to);
                    let first = !seen.contains(&key);
                    seen.push(key);
                    first
                }
            })
            .collect()
    }

    /// Where a drawn transition starts: its state, its superstate, or `__any`.
    fn tail(&self, t: &TransitionMeta) -> &'static str {
        match t.declared_on() {
            DeclaredOn::State => self.state_name(t.from),
            DeclaredOn::Superstate(i) => {
                self.superstates().get(i).map_or("<unknown>", |s| s.name())
            }
            DeclaredOn::AnyState => "__any",
        }
    }

    /// The child of superstate `i` on the way down to its initial state: a state's or a
    /// superstate's name.
    fn initial_child(&self, i: usize) -> &'static str {
        let Some(sup) = self.superstates().get(i) else {
            return "<unknown>";
        };
        let leaf = sup.initial();
        if self.state(leaf).and_then(|m| m.parent()) == Some(i) {
            return self.state_name(leaf);
        }
        self.ancestors(leaf)
            .find(|&a| self.superstates().get(a).and_then(|s| s.parent()) == Some(i))
            .and_then(|a| self.superstates().get(a))
            .map_or_else(|| self.state_name(leaf), |s| s.name())
    }

    fn mermaid_composite(&self, out: &mut String, i: usize, depth: usize) {
        let pad = "    ".repeat(depth);
        let Some(sup) = self.superstates().get(i) else {
            return;
        };
        if depth > self.superstates().len() {
            return; // a cycle in a hand-built table
        }
        let _ = writeln!(out, "{pad}state {} {{", sup.name());
        let _ = writeln!(out, "{pad}    [*] --> {}", self.initial_child(i));
        for s in self.states().iter().filter(|s| s.parent() == Some(i)) {
            let _ = writeln!(out, "{pad}    {}", s.name());
        }
        for (k, inner) in self.superstates().iter().enumerate() {
            if inner.parent() == Some(i) {
                self.mermaid_composite(out, k, depth + 1);
            }
        }
        let _ = writeln!(out, "{pad}}}");
    }

    fn dot_cluster(&self, out: &mut String, i: usize, depth: usize) {
        let pad = "    ".repeat(depth);
        let Some(sup) = self.superstates().get(i) else {
            return;
        };
        if depth > self.superstates().len() {
            return;
        }
        let _ = writeln!(out, "{pad}subgraph cluster_{} {{", sup.name());
        let _ = writeln!(out, "{pad}    label=\"{}\";", sup.name());
        for s in self.states().iter().filter(|s| s.parent() == Some(i)) {
            let _ = writeln!(out, "{pad}    {};", s.name());
        }
        for (k, inner) in self.superstates().iter().enumerate() {
            if inner.parent() == Some(i) {
                self.dot_cluster(out, k, depth + 1);
            }
        }
        let _ = writeln!(out, "{pad}}}");
    }

    /// The event's name, or `after 1200 ms / Missed` for the event of the state's timeout.
    fn edge_label(&self, t: &TransitionMeta) -> String {
        let name = self.event_name(t.event);
        // A superstate's timeout, on the transition drawn from the superstate.
        if let DeclaredOn::Superstate(i) = t.declared_on() {
            if let Some(timeout) = self
                .superstates()
                .get(i)
                .and_then(|s| s.state_timeout())
                .filter(|timeout| timeout.event == t.event)
            {
                return format!(
                    "after {} / {name}",
                    crate::timer::human_ms(timeout.after_ms)
                );
            }
        }
        match self.state(t.from).and_then(|s| s.state_timeout()) {
            Some(timeout) if timeout.event == t.event => {
                format!(
                    "after {} / {name}",
                    crate::timer::human_ms(timeout.after_ms)
                )
            }
            _ => name.to_string(),
        }
    }

    /// "defers Confirm; dumps others" style summary of a state's non-default policies.
    fn policy_note(&self, state: StateId) -> Option<String> {
        let meta = self.state(state)?;
        let mut parts: Vec<String> = Vec::new();
        for policy in [
            Policy::Defer,
            Policy::Dump,
            Policy::Delegate,
            Policy::Reject,
        ] {
            let names: Vec<&str> = meta
                .event_policies()
                .iter()
                .filter(|(_, p)| *p == policy)
                .map(|(e, _)| self.event_name(*e))
                .collect();
            if !names.is_empty() {
                parts.push(format!("{} {}", verb(policy), names.join(", ")));
            }
        }
        if meta.otherwise_policy() != Policy::Reject {
            parts.push(format!("{} any other", verb(meta.otherwise_policy())));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

fn verb(policy: Policy) -> &'static str {
    match policy {
        Policy::Reject => "rejects",
        Policy::Defer => "defers",
        Policy::Dump => "dumps",
        Policy::Delegate => "delegates",
    }
}

#[cfg(test)]
mod tests {
    use crate::table::{EventId, Policy, StateMeta, Table, TransitionMeta};

    const T: Table = Table::new(
        "Door",
        &[
            StateMeta::new("Open"),
            StateMeta::new("Closed").policies(&[(EventId::new(1), Policy::Defer)]),
            StateMeta::new("Gone").terminal(),
        ],
        &["Close", "Open", "Burn"],
        &[TransitionMeta::new(0, 0, 1), TransitionMeta::new(1, 2, 2)],
        0,
    );

    #[test]
    fn mermaid_lists_start_transitions_terminals_and_policies() {
        assert_eq!(
            T.to_mermaid(),
            "stateDiagram-v2\n    [*] --> Open\n    Open --> Closed : Close\n    \
             Closed --> Gone : Burn\n    note right of Closed : defers Open\n    \
             Gone --> [*]\n"
        );
    }

    #[test]
    fn dot_marks_terminals_and_labels_edges() {
        let dot = T.to_dot();
        assert!(dot.starts_with("digraph Door {\n"));
        assert!(dot.contains("    Gone [shape=doublecircle];\n"));
        assert!(dot.contains("    Closed [shape=circle, label=\"Closed\\n(defers Open)\"];\n"));
        assert!(dot.contains("    __start -> Open;\n"));
        assert!(dot.contains("    Open -> Closed [label=\"Close\"];\n"));
        assert!(dot.ends_with("}\n"));
    }

    #[test]
    fn a_state_timeout_is_drawn_as_after_n_ms_on_its_edge() {
        const P: Table = Table::new(
            "Pacer",
            &[
                StateMeta::new("Sensing").timeout(1200, 1),
                StateMeta::new("Pacing").timeout(90_000, 1),
            ],
            &["Pulse", "Missed"],
            &[
                TransitionMeta::new(0, 0, 0),
                TransitionMeta::new(0, 1, 1),
                TransitionMeta::new(1, 0, 0),
                TransitionMeta::new(1, 1, 1),
            ],
            0,
        );
        let mermaid = P.to_mermaid();
        assert!(
            mermaid.contains("    Sensing --> Sensing : Pulse\n"),
            "{mermaid}"
        );
        assert!(
            mermaid.contains("    Sensing --> Pacing : after 1200 ms / Missed\n"),
            "{mermaid}"
        );
        assert!(
            mermaid.contains("    Pacing --> Pacing : after 90 s / Missed\n"),
            "{mermaid}"
        );
        let dot = P.to_dot();
        assert!(
            dot.contains("    Sensing -> Pacing [label=\"after 1200 ms / Missed\"];\n"),
            "{dot}"
        );
    }
}

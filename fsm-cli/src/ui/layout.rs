//! The statechart of `fsm ui`: a layered drawing of a machine type's table, as SVG whose
//! elements carry ids (`count-3`, `rate-7`) for the page to update live.
//!
//! Layered, left to right, as state machines are usually read: a depth-first walk from the
//! initial state (then from any state it does not reach, in declaration order) finds the
//! transitions that close a cycle; without them the graph is acyclic, and each state's layer
//! is its longest path from a state nothing enters. Within a layer, states are ordered by a
//! few sweeps of the barycentre heuristic (each state placed at the mean position of its
//! neighbours in the layers beside it), which removes most crossings on graphs of tens of
//! states. Forward transitions are drawn as curves left to right; transitions back (to an
//! earlier layer, or within one) as arcs under the states; a state's transitions to itself as
//! a loop above it; several transitions between one pair of states fan out.

use std::collections::HashMap;
use std::fmt::Write as _;

use fsm_core::kernel::admin::proto;

/// A state's box.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub(crate) layer: usize,
    pub(crate) x: f64,
    pub(crate) y: f64,
    pub(crate) w: f64,
    pub(crate) h: f64,
}

/// A transition's curve: an SVG path, and where its label goes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Edge {
    pub(crate) path: String,
    pub(crate) label: (f64, f64),
    /// Forward (left to right), back (an arc under the states), or a loop.
    pub(crate) kind: EdgeKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EdgeKind {
    Forward,
    Back,
    Loop,
}

/// The drawing: a box per state (in the table's order), a curve per transition (likewise).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Layout {
    pub(crate) width: f64,
    pub(crate) height: f64,
    pub(crate) nodes: Vec<Node>,
    pub(crate) edges: Vec<Edge>,
}

const NODE_H: f64 = 58.0;
const GAP_Y: f64 = 46.0;
/// Room between layers for the curves and their labels.
const GAP_X: f64 = 150.0;
const MARGIN: f64 = 40.0;
/// Room under the states for the arcs of transitions back.
const BACK_ROOM: f64 = 30.0;

/// Lays out `table`.
pub(crate) fn layout(table: &proto::Table) -> Layout {
    let n = table.states.len();
    let index: HashMap<&str, usize> = table
        .states
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    // Transitions as index pairs; a name the states do not have (not from the derive) is
    // drawn from and to nowhere: skipped from the layering, still given a curve.
    let pairs: Vec<Option<(usize, usize)>> = table
        .transitions
        .iter()
        .map(|t| Some((*index.get(t.from.as_str())?, *index.get(t.to.as_str())?)))
        .collect();
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(a, b) in pairs.iter().flatten() {
        if a != b && !out[a].contains(&b) {
            out[a].push(b);
        }
    }

    // Depth-first from the initial state, then from every state not yet seen: an edge to a
    // state on the walk's stack closes a cycle.
    let initial = index.get(table.initial.as_str()).copied().unwrap_or(0);
    let mut seen = vec![false; n];
    let mut on_stack = vec![false; n];
    let mut back: Vec<(usize, usize)> = Vec::new();
    let mut visit_order: Vec<usize> = Vec::with_capacity(n);
    let roots = std::iter::once(initial).chain(0..n);
    for root in roots {
        if n == 0 || seen[root] {
            continue;
        }
        // An explicit stack of (state, next outgoing index).
        let mut stack = vec![(root, 0usize)];
        seen[root] = true;
        on_stack[root] = true;
        visit_order.push(root);
        while let Some(&mut (v, ref mut next)) = stack.last_mut() {
            if let Some(&w) = out[v].get(*next) {
                *next += 1;
                if on_stack[w] {
                    back.push((v, w));
                } else if !seen[w] {
                    seen[w] = true;
                    on_stack[w] = true;
                    visit_order.push(w);
                    stack.push((w, 0));
                }
            } else {
                on_stack[v] = false;
                stack.pop();
            }
        }
    }

    // Longest path over the forward edges, in topological order (Kahn).
    let forward: Vec<(usize, usize)> = out
        .iter()
        .enumerate()
        .flat_map(|(a, bs)| bs.iter().map(move |&b| (a, b)))
        .filter(|e| !back.contains(e))
        .collect();
    let mut indegree = vec![0usize; n];
    for &(_, b) in &forward {
        indegree[b] += 1;
    }
    let mut layer = vec![0usize; n];
    let mut ready: Vec<usize> = visit_order
        .iter()
        .copied()
        .filter(|&v| indegree[v] == 0)
        .collect();
    ready.reverse();
    while let Some(v) = ready.pop() {
        for &(a, b) in forward.iter().filter(|e| e.0 == v) {
            layer[b] = layer[b].max(layer[a] + 1);
            indegree[b] -= 1;
            if indegree[b] == 0 {
                ready.push(b);
            }
        }
    }
    let layers = layer.iter().copied().max().map_or(0, |m| m + 1);

    // Order within layers: first by the walk, then barycentre sweeps down and up.
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for &v in &visit_order {
        rows[layer[v]].push(v);
    }
    let neighbours: Vec<Vec<usize>> = (0..n)
        .map(|v| {
            let mut ns: Vec<usize> = out[v].clone();
            ns.extend((0..n).filter(|&u| out[u].contains(&v)));
            ns
        })
        .collect();
    for sweep in 0..8 {
        let order: Vec<usize> = if sweep % 2 == 0 {
            (1..layers).collect()
        } else {
            (0..layers.saturating_sub(1)).rev().collect()
        };
        for l in order {
            let position = |v: usize| -> Option<f64> {
                rows[layer[v]]
                    .iter()
                    .position(|&u| u == v)
                    .map(|p| p as f64)
            };
            let mut keyed: Vec<(f64, usize, usize)> = rows[l]
                .iter()
                .enumerate()
                .map(|(p, &v)| {
                    let near: Vec<f64> = neighbours[v]
                        .iter()
                        .filter(|&&u| layer[u] != l)
                        .filter_map(|&u| position(u))
                        .collect();
                    let key = if near.is_empty() {
                        p as f64
                    } else {
                        near.iter().sum::<f64>() / near.len() as f64
                    };
                    (key, p, v)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            rows[l] = keyed.into_iter().map(|(_, _, v)| v).collect();
        }
    }

    // Coordinates: a column per layer, each centred on the tallest.
    let width_of = |v: usize| -> f64 {
        let s = &table.states[v];
        let text = s.name.chars().count().max(10) as f64 * 8.5 + 36.0;
        let timeout = s
            .timeout
            .as_ref()
            .map_or(0.0, |(_, e)| (e.chars().count() + 12) as f64 * 6.5 + 24.0);
        let caption = caption(s).chars().count() as f64 * 6.2 + 24.0;
        text.max(timeout).max(caption).max(120.0)
    };
    // With superstates, each box has a line more: the superstates it is inside.
    let node_h = if table.superstates.is_empty() {
        NODE_H
    } else {
        NODE_H + 14.0
    };
    let tallest = rows.iter().map(Vec::len).max().unwrap_or(0) as f64;
    let column_h = tallest * node_h + (tallest - 1.0).max(0.0) * GAP_Y;
    let mut nodes: Vec<Node> = (0..n)
        .map(|v| Node {
            layer: layer[v],
            x: 0.0,
            y: 0.0,
            w: width_of(v),
            h: node_h,
        })
        .collect();
    let mut x = MARGIN + 24.0; // room for the initial state's marker
    for row in &rows {
        let w = row.iter().map(|&v| nodes[v].w).fold(0.0, f64::max);
        let h = row.len() as f64 * node_h + (row.len() as f64 - 1.0).max(0.0) * GAP_Y;
        let mut y = MARGIN + 40.0 + (column_h - h) / 2.0;
        for &v in row {
            nodes[v].x = x + (w - nodes[v].w) / 2.0;
            nodes[v].y = y;
            y += node_h + GAP_Y;
        }
        x += w + GAP_X;
    }
    let width = (x - GAP_X + MARGIN).max(2.0 * MARGIN);

    // Several transitions between one pair of states fan out by their rank among them.
    let mut siblings: HashMap<(usize, usize), usize> = HashMap::new();
    let ranks: Vec<f64> = pairs
        .iter()
        .map(|pair| {
            pair.map_or(0.0, |(a, b)| {
                let rank = siblings.entry((a.min(b), a.max(b))).or_insert(0);
                *rank += 1;
                (*rank - 1) as f64
            })
        })
        .collect();
    // A transition over more than one layer arcs above the states between (rather than
    // through them); the drawing moves down to make room for the highest arc.
    fn arc(nodes: &[Node], a: usize, b: usize, rank: f64) -> f64 {
        let span = (nodes[a].x - nodes[b].x).abs();
        BACK_ROOM + span * 0.12 + rank * 22.0
    }
    fn over(nodes: &[Node], a: usize, b: usize) -> bool {
        nodes[b].layer > nodes[a].layer + 1
    }
    let room_above = pairs
        .iter()
        .zip(&ranks)
        .filter_map(|(pair, &rank)| {
            let (a, b) = (*pair)?;
            over(&nodes, a, b)
                .then(|| arc(&nodes, a, b, rank) - (nodes[a].y.min(nodes[b].y) - MARGIN))
        })
        .fold(0.0, f64::max);
    for node in &mut nodes {
        node.y += room_above;
    }
    let bottom = MARGIN + 40.0 + column_h + room_above;

    let mut deepest = bottom;
    let edges: Vec<Edge> = pairs
        .iter()
        .zip(&ranks)
        .map(|(pair, &rank)| {
            let Some((a, b)) = *pair else {
                return Edge {
                    path: String::new(),
                    label: (0.0, 0.0),
                    kind: EdgeKind::Back,
                };
            };
            let (na, nb) = (&nodes[a], &nodes[b]);
            if a == b {
                // A loop above the state, wider for each further one.
                let (cx, top) = (na.x + na.w / 2.0, na.y);
                let spread = 22.0 + rank * 12.0;
                let lift = 34.0 + rank * 18.0;
                return Edge {
                    path: format!(
                        "M {:.1} {:.1} C {:.1} {:.1}, {:.1} {:.1}, {:.1} {:.1}",
                        cx - spread / 2.0,
                        top,
                        cx - spread,
                        top - lift,
                        cx + spread,
                        top - lift,
                        cx + spread / 2.0,
                        top
                    ),
                    label: (cx, top - lift * 0.75 - 4.0),
                    kind: EdgeKind::Loop,
                };
            }
            if over(&nodes, a, b) {
                let (x1, y1) = (na.x + na.w * 0.6, na.y);
                let (x2, y2) = (nb.x + nb.w * 0.4, nb.y);
                let high = y1.min(y2) - arc(&nodes, a, b, rank);
                return cubic(
                    (x1, y1),
                    (x1, high),
                    (x2, high),
                    (x2, y2),
                    -6.0,
                    EdgeKind::Forward,
                );
            }
            if nb.layer > na.layer {
                let (x1, y1) = (na.x + na.w, na.y + na.h / 2.0 + rank * 8.0);
                let (x2, y2) = (nb.x, nb.y + nb.h / 2.0 + rank * 8.0);
                let bend = rank * 26.0 * if y2 >= y1 { -1.0 } else { 1.0 };
                let dx = (x2 - x1) * 0.45;
                return cubic(
                    (x1, y1),
                    (x1 + dx, y1 + bend),
                    (x2 - dx, y2 + bend),
                    (x2, y2),
                    -6.0,
                    EdgeKind::Forward,
                );
            }
            // Back, or within a layer: an arc under both states, deeper the farther it
            // goes, so arcs between other pairs nest rather than cross.
            let (x1, y1) = (na.x + na.w * 0.4, na.y + na.h);
            let (x2, y2) = (nb.x + nb.w * 0.6, nb.y + nb.h);
            let low = y1.max(y2) + arc(&nodes, a, b, rank);
            deepest = deepest.max(low);
            cubic(
                (x1, y1),
                (x1, low),
                (x2, low),
                (x2, y2),
                14.0,
                EdgeKind::Back,
            )
        })
        .collect();
    Layout {
        width,
        height: deepest + MARGIN,
        nodes,
        edges,
    }
}

/// A cubic Bézier edge from `p0` to `p3`, its label at the curve's middle moved by `lift`.
fn cubic(
    p0: (f64, f64),
    c1: (f64, f64),
    c2: (f64, f64),
    p3: (f64, f64),
    lift: f64,
    kind: EdgeKind,
) -> Edge {
    let mid = bezier_mid(p0, c1, c2, p3);
    Edge {
        path: format!(
            "M {:.1} {:.1} C {:.1} {:.1}, {:.1} {:.1}, {:.1} {:.1}",
            p0.0, p0.1, c1.0, c1.1, c2.0, c2.1, p3.0, p3.1
        ),
        label: (mid.0, mid.1 + lift),
        kind,
    }
}

/// The point of a cubic Bézier curve at t = 1/2.
fn bezier_mid(p0: (f64, f64), p1: (f64, f64), p2: (f64, f64), p3: (f64, f64)) -> (f64, f64) {
    (
        (p0.0 + 3.0 * p1.0 + 3.0 * p2.0 + p3.0) / 8.0,
        (p0.1 + 3.0 * p1.1 + 3.0 * p2.1 + p3.1) / 8.0,
    )
}

/// The superstates a state is inside, outermost first: `Checkout › Paying`.
fn caption(s: &proto::TableState) -> String {
    s.superstates
        .iter()
        .rev()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" \u{203a} ")
}

/// Text for an SVG text node or attribute.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A timeout as a person reads it: `750 ms`, `30 s`, `30 min`, `2 h`.
fn duration(ms: u64) -> String {
    match ms {
        ms if ms < 1_000 || ms % 1_000 != 0 => format!("{ms} ms"),
        ms if ms < 60_000 || ms % 60_000 != 0 => format!("{} s", ms / 1_000),
        ms if ms < 3_600_000 || ms % 3_600_000 != 0 => format!("{} min", ms / 60_000),
        ms => format!("{} h", ms / 3_600_000),
    }
}

/// The statechart as an SVG element. Each state is a `g.state` with `data-state` (its name)
/// holding `text.count#count-{i}`; each transition a `g.edge` with `data-from`, `data-event`,
/// `data-to` holding `tspan.rate#rate-{j}`; `i` and `j` are indexes in the table's states and
/// transitions, as the metrics' per-transition counts are.
pub(crate) fn svg(table: &proto::Table, layout: &Layout) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="statechart" viewBox="0 0 {w:.0} {h:.0}" width="{w:.0}" height="{h:.0}" role="img" aria-label="statechart of {m}">"#,
        w = layout.width,
        h = layout.height,
        m = escape(&table.machine)
    );
    s.push_str(
        r#"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="10" markerHeight="10" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" class="arrowhead"/></marker></defs>"#,
    );
    for (j, (t, e)) in table.transitions.iter().zip(&layout.edges).enumerate() {
        if e.path.is_empty() {
            continue;
        }
        let kind = match e.kind {
            EdgeKind::Forward => "forward",
            EdgeKind::Back => "back",
            EdgeKind::Loop => "loop",
        };
        let _ = write!(
            s,
            r#"<g class="edge {kind}" id="edge-{j}" data-from="{f}" data-event="{ev}" data-to="{to}"><path d="{d}" marker-end="url(#arrow)"/><text class="label" x="{x:.1}" y="{y:.1}" text-anchor="middle">{ev}<tspan class="rate" id="rate-{j}" dx="4"></tspan></text></g>"#,
            f = escape(&t.from),
            ev = escape(&t.event),
            to = escape(&t.to),
            d = e.path,
            x = e.label.0,
            y = e.label.1,
        );
    }
    for (i, (st, n)) in table.states.iter().zip(&layout.nodes).enumerate() {
        let class = if st.terminal {
            "state terminal"
        } else {
            "state"
        };
        let _ = write!(
            s,
            r#"<g class="{class}" id="state-{i}" data-state="{name}" data-within="{within}" tabindex="0"><rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" rx="10"/>"#,
            name = escape(&st.name),
            within = escape(&st.superstates.join(" ")),
            x = n.x,
            y = n.y,
            w = n.w,
            h = n.h,
        );
        if st.terminal {
            let _ = write!(
                s,
                r#"<rect class="inner" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="7"/>"#,
                n.x + 3.0,
                n.y + 3.0,
                n.w - 6.0,
                n.h - 6.0
            );
        }
        let cx = n.x + n.w / 2.0;
        // With superstates, the path of them above the name.
        let lift = if table.superstates.is_empty() {
            0.0
        } else {
            let _ = write!(
                s,
                r#"<text class="within" x="{cx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                n.y + 16.0,
                escape(&caption(st)),
            );
            14.0
        };
        let _ = write!(
            s,
            r#"<text class="name" x="{cx:.1}" y="{:.1}" text-anchor="middle">{}</text><text class="count" id="count-{i}" x="{cx:.1}" y="{:.1}" text-anchor="middle" data-count="">&#8230;</text>"#,
            n.y + 22.0 + lift,
            escape(&st.name),
            n.y + 42.0 + lift,
        );
        if let Some((ms, event)) = &st.timeout {
            let _ = write!(
                s,
                r#"<text class="timeout" x="{cx:.1}" y="{:.1}" text-anchor="middle">after {} &#8594; {}</text>"#,
                n.y + n.h + 14.0,
                duration(*ms),
                escape(event)
            );
        }
        s.push_str("</g>");
        if st.name == table.initial {
            let (x, y) = (n.x - 26.0, n.y + n.h / 2.0);
            let _ = write!(
                s,
                r#"<g class="initial"><circle cx="{x:.1}" cy="{y:.1}" r="6"/><path d="M {:.1} {y:.1} L {:.1} {y:.1}" marker-end="url(#arrow)"/></g>"#,
                x + 6.0,
                n.x - 1.0
            );
        }
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(states: &[(&str, bool)], transitions: &[(&str, &str, &str)]) -> proto::Table {
        proto::Table {
            machine: "Test".into(),
            initial: states[0].0.into(),
            states: states
                .iter()
                .map(|(name, terminal)| proto::TableState {
                    name: (*name).into(),
                    terminal: *terminal,
                    timeout: None,
                    superstates: Vec::new(),
                })
                .collect(),
            transitions: transitions
                .iter()
                .map(|(from, event, to)| proto::TableTransition {
                    from: (*from).into(),
                    event: (*event).into(),
                    to: (*to).into(),
                })
                .collect(),
            superstates: Vec::new(),
        }
    }

    fn overlap(a: &Node, b: &Node) -> bool {
        a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h
    }

    /// A subscription-like machine: a cycle, a loop, parallel transitions, a state nothing
    /// reaches, and a chain long enough for several layers.
    fn subscription() -> proto::Table {
        table(
            &[
                ("Trial", false),
                ("Active", false),
                ("PastDue", false),
                ("Suspended", false),
                ("Cancelled", true),
                ("Archived", true),
                ("Orphan", false),
            ],
            &[
                ("Trial", "Convert", "Active"),
                ("Trial", "Cancel", "Cancelled"),
                ("Active", "Renew", "Active"),
                ("Active", "PaymentFailed", "PastDue"),
                ("Active", "Cancel", "Cancelled"),
                ("PastDue", "PaymentSucceeded", "Active"),
                ("PastDue", "GiveUp", "Suspended"),
                ("PastDue", "Retry", "PastDue"),
                ("Suspended", "Reactivate", "Active"),
                ("Suspended", "Cancel", "Cancelled"),
                ("Suspended", "Close", "Cancelled"),
                ("Cancelled", "Archive", "Archived"),
                ("Orphan", "Adopt", "Trial"),
            ],
        )
    }

    #[test]
    fn every_state_and_transition_is_drawn_and_no_two_states_overlap() {
        let t = subscription();
        let l = layout(&t);
        assert_eq!(l.nodes.len(), t.states.len());
        assert_eq!(l.edges.len(), t.transitions.len());
        for (i, a) in l.nodes.iter().enumerate() {
            assert!(a.x >= 0.0 && a.y >= 0.0 && a.x + a.w <= l.width && a.y + a.h <= l.height);
            for b in &l.nodes[i + 1..] {
                assert!(!overlap(a, b), "{a:?} overlaps {b:?}");
            }
        }
        assert!(l.edges.iter().all(|e| e.path.starts_with("M ")));
        let svg = svg(&t, &l);
        for (i, s) in t.states.iter().enumerate() {
            assert!(svg.contains(&format!(r#"data-state="{}""#, s.name)));
            assert!(svg.contains(&format!(r#"id="count-{i}""#)));
        }
        for j in 0..t.transitions.len() {
            assert!(svg.contains(&format!(r#"id="rate-{j}""#)));
        }
        assert_eq!(
            svg.matches("class=\"inner\"").count(),
            2,
            "two terminal states"
        );
    }

    #[test]
    fn transitions_read_left_to_right_and_cycles_close_backwards() {
        let t = subscription();
        let l = layout(&t);
        let layer =
            |name: &str| l.nodes[t.states.iter().position(|s| s.name == name).unwrap()].layer;
        assert_eq!(layer("Trial"), 1, "after Orphan, which enters it");
        assert_eq!(layer("Orphan"), 0);
        assert!(layer("Active") < layer("PastDue"));
        assert!(layer("PastDue") < layer("Suspended"));
        assert!(layer("Cancelled") < layer("Archived"));
        let kind = |from: &str, event: &str| {
            let j = t
                .transitions
                .iter()
                .position(|x| x.from == from && x.event == event)
                .unwrap();
            l.edges[j].kind
        };
        assert_eq!(kind("Trial", "Convert"), EdgeKind::Forward);
        assert_eq!(kind("Active", "Renew"), EdgeKind::Loop);
        assert_eq!(kind("PastDue", "PaymentSucceeded"), EdgeKind::Back);
        assert_eq!(kind("Suspended", "Reactivate"), EdgeKind::Back);
        // Two transitions from Suspended to Cancelled take two curves.
        let a = t
            .transitions
            .iter()
            .position(|x| x.event == "Cancel" && x.from == "Suspended");
        let b = t.transitions.iter().position(|x| x.event == "Close");
        assert_ne!(l.edges[a.unwrap()].path, l.edges[b.unwrap()].path);
        assert_ne!(l.edges[a.unwrap()].label, l.edges[b.unwrap()].label);
    }

    #[test]
    fn a_transition_over_several_layers_arcs_above_the_states_between() {
        let t = subscription();
        let l = layout(&t);
        let j = t
            .transitions
            .iter()
            .position(|x| x.from == "Trial" && x.event == "Cancel")
            .unwrap();
        let numbers: Vec<f64> = l.edges[j]
            .path
            .split([' ', ','])
            .filter_map(|w| w.parse().ok())
            .collect();
        let (from, to) = (&l.nodes[0], &l.nodes[4]);
        assert!(to.layer > from.layer + 1);
        let between: Vec<&Node> = l
            .nodes
            .iter()
            .filter(|n| n.layer > from.layer && n.layer < to.layer)
            .collect();
        assert!(!between.is_empty());
        // The control points (3rd to 6th numbers) lie above every state in between.
        for n in between {
            assert!(numbers[3] < n.y && numbers[5] < n.y, "{numbers:?} vs {n:?}");
        }
        assert!(numbers[3] >= 0.0, "room was made above: {numbers:?}");
    }

    #[test]
    fn the_drawing_is_the_same_every_time() {
        let t = subscription();
        assert_eq!(svg(&t, &layout(&t)), svg(&t, &layout(&t)));
    }

    #[test]
    fn names_are_escaped_and_odd_tables_do_not_panic() {
        let t = table(
            &[("A<b>&\"", false)],
            &[("A<b>&\"", "E'", "A<b>&\""), ("A<b>&\"", "X", "Nowhere")],
        );
        let l = layout(&t);
        let s = svg(&t, &l);
        assert!(!s.contains("A<b>"));
        assert!(s.contains("A&lt;b&gt;&amp;&quot;"));
        assert_eq!(
            l.edges[1].path, "",
            "a transition to an unknown state has no curve"
        );
        let empty = proto::Table {
            machine: "Empty".into(),
            initial: String::new(),
            states: Vec::new(),
            transitions: Vec::new(),
            superstates: Vec::new(),
        };
        let l = layout(&empty);
        assert!(l.nodes.is_empty());
        assert!(svg(&empty, &l).ends_with("</svg>"));
    }

    #[test]
    fn a_chain_of_twenty_states_stays_in_order() {
        let names: Vec<String> = (0..20).map(|i| format!("S{i}")).collect();
        let states: Vec<(&str, bool)> = names.iter().map(|n| (n.as_str(), false)).collect();
        let ts: Vec<(&str, &str, &str)> = names
            .windows(2)
            .map(|w| (w[0].as_str(), "Next", w[1].as_str()))
            .chain(std::iter::once((
                names[19].as_str(),
                "Restart",
                names[0].as_str(),
            )))
            .collect();
        let l = layout(&table(&states, &ts));
        for (i, n) in l.nodes.iter().enumerate() {
            assert_eq!(n.layer, i);
        }
        assert_eq!(l.edges[19].kind, EdgeKind::Back);
    }

    #[test]
    fn each_state_shows_the_superstates_it_is_inside() {
        let mut t = subscription();
        t.superstates = vec![
            proto::TableSuperstate {
                name: "Live".into(),
                parent: None,
                initial: "Active".into(),
            },
            proto::TableSuperstate {
                name: "Billing".into(),
                parent: Some("Live".into()),
                initial: "Active".into(),
            },
        ];
        for s in &mut t.states {
            if s.name == "Active" || s.name == "PastDue" {
                s.superstates = vec!["Billing".into(), "Live".into()];
            }
        }
        let l = layout(&t);
        let svg = svg(&t, &l);
        assert!(svg.contains("Live \u{203a} Billing"), "{svg}");
        assert!(svg.contains(r#"data-state="PastDue" data-within="Billing Live""#));
        assert!(svg.contains(r#"data-state="Trial" data-within="""#));
        assert!(
            l.nodes.iter().all(|n| n.h > NODE_H),
            "taller boxes hold the line"
        );
        for (i, a) in l.nodes.iter().enumerate() {
            for b in &l.nodes[i + 1..] {
                assert!(!overlap(a, b));
            }
        }
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(750), "750 ms");
        assert_eq!(duration(1_500), "1500 ms");
        assert_eq!(duration(30_000), "30 s");
        assert_eq!(duration(90_000), "90 s");
        assert_eq!(duration(1_800_000), "30 min");
        assert_eq!(duration(7_200_000), "2 h");
    }
}

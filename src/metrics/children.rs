//! The `children:` series: per child (label `child`, its pid) its leaf's numbers, and per
//! instance the children recycled. Left out entirely when no instance has children, so a fleet
//! without `children:` renders as before.

use super::{family, sample};
use crate::protocol::{ChildStatus, InstanceStatus};
use crate::vocabulary::ChildState;

type ChildSample = fn(&ChildStatus) -> Option<f64>;

const CHILD_GAUGES: [(&str, &str, ChildSample); 5] = [
    (
        "child_memory_current_bytes",
        "memory.current of the child's leaf.",
        |c| c.memory_current.map(|v| v as f64),
    ),
    (
        "child_memory_high_bytes",
        "memory.high of the child's leaf; absent when \"max\" (also while it recycles).",
        |c| c.memory_high.map(|v| v as f64),
    ),
    (
        "child_memory_max_bytes",
        "memory.max of the child's leaf; absent when \"max\".",
        |c| c.memory_max.map(|v| v as f64),
    ),
    (
        "child_psi_some_avg10",
        "Memory PSI \"some\" avg10 of the child's leaf as a ratio (0..1).",
        |c| c.psi_some_avg10.map(|v| v / 100.0),
    ),
    (
        "child_recycling",
        "1 while the child is being recycled, else 0.",
        |c| {
            Some(if c.state == ChildState::Recycling {
                1.0
            } else {
                0.0
            })
        },
    ),
];

pub(super) fn render(out: &mut String, instances: &[(&str, &str, &InstanceStatus)]) {
    let with: Vec<_> = instances
        .iter()
        .filter(|(_, _, i)| !i.children.is_empty() || i.child_recycles > 0)
        .collect();
    if with.is_empty() {
        return;
    }
    family(
        out,
        "child_recycles_total",
        "counter",
        "Children of the instance recycled alone.",
    );
    for (policy, index, i) in &with {
        let labels = [("policy", *policy), ("index", *index)];
        sample(
            out,
            "child_recycles_total",
            &labels,
            f64::from(i.child_recycles),
        );
    }
    for (name, help, get) in CHILD_GAUGES {
        family(out, name, "gauge", help);
        for (policy, index, i) in &with {
            for c in &i.children {
                let pid = c.pid.to_string();
                if let Some(v) = get(c) {
                    let labels = [("policy", *policy), ("index", *index), ("child", &pid)];
                    sample(out, name, &labels, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::ChildStatus;
    use crate::vocabulary::ChildState;

    #[test]
    fn each_child_is_a_series_and_fleets_without_children_render_nothing() {
        let mut out = String::new();
        let mut i = super::super::tests::instance("pf/0");
        super::render(&mut out, &[("pf", "0", &i)]);
        assert!(out.is_empty(), "{out}");
        i.child_recycles = 2;
        i.children = vec![ChildStatus {
            pid: 42,
            leaf: "child-42".into(),
            state: ChildState::Recycling,
            memory_current: Some(1024),
            memory_high: None,
            boundary: None,
            memory_max: Some(2048),
            psi_some_avg10: Some(12.5),
            recycles: 1,
        }];
        super::render(&mut out, &[("pf", "0", &i)]);
        for line in [
            "oomguard_child_recycles_total{policy=\"pf\",index=\"0\"} 2",
            "oomguard_child_memory_current_bytes{policy=\"pf\",index=\"0\",child=\"42\"} 1024",
            "oomguard_child_memory_max_bytes{policy=\"pf\",index=\"0\",child=\"42\"} 2048",
            "oomguard_child_psi_some_avg10{policy=\"pf\",index=\"0\",child=\"42\"} 0.125",
            "oomguard_child_recycling{policy=\"pf\",index=\"0\",child=\"42\"} 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} not in\n{out}");
        }
        assert!(!out.contains("child_memory_high_bytes{"), "{out}");
    }
}

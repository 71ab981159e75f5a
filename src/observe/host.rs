//! What the host offers and what shunt chose from it: `shunt check-host` prints it, and every report carries
//! it (`host` in the JSON), so that a figure can always be read with the features that made it.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

/// One probed feature of the kernel, the interface or the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What was probed, by the kernel's name where it has one (e.g. `bpf_xdp_adjust_meta`).
    pub feature: String,
    /// `Some(true)`: offered; `Some(false)`: not offered; `None`: the kernel could not be asked (see `detail`).
    pub available: Option<bool>,
    /// What in shunt needs it.
    pub needed_by: String,
    /// Whether shunt cannot serve without it.
    pub required: bool,
    /// What shunt does without it (empty when it is offered).
    pub otherwise: String,
    /// Why the answer is unknown, or anything else worth knowing about it.
    pub detail: String,
}

/// The choices a run made from the findings (those that apply to its datapath).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choices {
    /// XDP attach mode asked for (native, generic or auto).
    pub attach_mode: Option<String>,
    /// How the AF_XDP sockets were bound (zerocopy or copy), per worker when they differ.
    pub bind_mode: Option<String>,
    /// How packets are stamped with the XDP-hook time (meta, head or none).
    pub stamp: Option<String>,
    /// Why that method.
    pub stamp_reason: Option<String>,
    /// Whether the NIC's RX hardware timestamps are asked for (a device-bound program).
    pub hardware_timestamps: Option<bool>,
    /// How workers wait for packets.
    pub poll_mode: Option<String>,
}

impl Choices {
    /// The choices made, as one line ("attach generic, bind copy, stamp head, ..."); empty when none.
    pub fn summary(&self) -> String {
        let mut chosen = Vec::new();
        if let Some(m) = &self.attach_mode {
            chosen.push(format!("attach {m}"));
        }
        if let Some(m) = &self.bind_mode {
            chosen.push(format!("bind {m}"));
        }
        if let Some(m) = &self.stamp {
            chosen.push(format!("stamp {m}"));
        }
        if let Some(hw) = self.hardware_timestamps {
            chosen.push(format!("hardware timestamps {}", if hw { "asked" } else { "not asked" }));
        }
        if let Some(m) = &self.poll_mode {
            chosen.push(format!("poll {m}"));
        }
        chosen.join(", ")
    }
}

/// Everything probed, and the choices made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    /// The kernel's release string (for reading; nothing is decided on it).
    pub kernel: String,
    /// The interface probed, if any.
    pub interface: Option<String>,
    /// One entry per probed feature.
    pub findings: Vec<Finding>,
    /// What the run chose.
    pub choices: Choices,
}

impl HostReport {
    /// The first required feature the host lacks, if any.
    pub fn missing_required(&self) -> Option<&Finding> {
        self.findings.iter().find(|f| f.required && f.available == Some(false))
    }

    /// The finding named `feature`.
    pub fn finding(&self, feature: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.feature == feature)
    }

    /// One line per finding: feature, yes/no/unknown, what needs it, and what shunt does without it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "host: kernel {}{}",
            self.kernel,
            self.interface.as_deref().map(|i| format!(", interface {i}")).unwrap_or_default()
        );
        let width = self.findings.iter().map(|f| f.feature.len()).max().unwrap_or(0);
        for f in &self.findings {
            let answer = match f.available {
                Some(true) => "yes",
                Some(false) if f.required => "NO (required)",
                Some(false) => "no",
                None => "unknown",
            };
            let mut line = format!("  {:<width$}  {:<13}  {}", f.feature, answer, f.needed_by);
            if f.available != Some(true) && !f.otherwise.is_empty() {
                let _ = write!(line, "; without it: {}", f.otherwise);
            }
            if !f.detail.is_empty() {
                let _ = write!(line, " ({})", f.detail);
            }
            let _ = writeln!(out, "{line}");
        }
        let c = &self.choices;
        let chosen = c.summary();
        if !chosen.is_empty() {
            let _ = writeln!(out, "  chosen: {chosen}");
        }
        if let Some(r) = &c.stamp_reason {
            let _ = writeln!(out, "  stamp: {r}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(feature: &str, available: Option<bool>, required: bool) -> Finding {
        Finding {
            feature: feature.into(),
            available,
            needed_by: "x".into(),
            required,
            otherwise: "y".into(),
            detail: String::new(),
        }
    }

    #[test]
    fn a_missing_required_feature_is_named() {
        let mut r = HostReport {
            kernel: "6.18".into(),
            findings: vec![finding("bpf_xdp_adjust_meta", Some(false), false), finding("AF_XDP", Some(true), true)],
            ..HostReport::default()
        };
        assert!(r.missing_required().is_none());
        assert!(r.text().contains("bpf_xdp_adjust_meta"));
        assert!(r.text().contains("without it: y"));
        r.findings.push(finding("bpf_redirect_map", Some(false), true));
        assert_eq!(r.missing_required().map(|f| f.feature.as_str()), Some("bpf_redirect_map"));
        assert!(r.text().contains("NO (required)"));
    }
}

//! `shunt-bench tables`: the performance tables of README.md and docs/ are generated from result files, in place,
//! between markers, so that no figure there is copied by hand; `--check` names each block that no longer matches
//! its result file (a test runs it over the repository).
//!
//! A block, in any Markdown file:
//!
//! ```text
//! <!-- shunt-bench tables: NAME KIND -->
//! ...generated...
//! <!-- end shunt-bench tables -->
//! ```
//!
//! NAME is a result of `compare` (`<results>/NAME.json`), KIND one of [`Kind`]. Everything between the two marker
//! lines is replaced; the cells come from the page renderer's own formatting (compare.rs), so a figure reads the
//! same here as on `NAME.md`. Markers inside code fences are text, not blocks.

use std::{
    collections::BTreeMap,
    path::{Component, Path, PathBuf},
    process::ExitCode,
};

use anyhow::{bail, Context};

use crate::{
    compare::{self, Comparison, CpuLoad, TargetSummary},
    load::parse_rate,
    verdict,
};

const START: &str = "<!-- shunt-bench tables:";
const END: &str = "<!-- end shunt-bench tables -->";

/// Flags of `tables`.
#[derive(Debug, Clone, clap::Args)]
pub struct TablesArgs {
    /// Directory of the result files (`NAME.json`, and the `NAME.md` pages the tables link to).
    #[arg(long, default_value = "bench/results")]
    pub results: PathBuf,
    /// Write nothing; exit 1 naming each block that differs from what its result file gives, with a short diff.
    #[arg(long)]
    pub check: bool,
    /// Markdown files holding marked blocks.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// What a block shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A row per target: what it is, ping-pong p50 / p99, the highest loss-free rate, CPU per reply at the
    /// lightest load.
    Summary,
    /// Server CPU per reply at each load of the CPU phase, a column per load.
    CpuCurve,
    /// The DNS comparison: loss-free qps (shunt-bench and dnsperf), p50 / p99 at fixed rates, CPU per query.
    Dns,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        match s {
            "summary" => Some(Kind::Summary),
            "cpu-curve" => Some(Kind::CpuCurve),
            "dns" => Some(Kind::Dns),
            _ => None,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Kind::Summary => "summary",
            Kind::CpuCurve => "cpu-curve",
            Kind::Dns => "dns",
        }
    }
}

/// One marked block of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Line of the start marker (1-based).
    pub line: usize,
    /// The result's name.
    pub name: String,
    /// The table kind.
    pub kind: Kind,
    /// Byte range of the generated text: after the start marker's line, up to the end marker's line.
    pub body: std::ops::Range<usize>,
}

/// The marked blocks of `text`, in order; an unterminated or nested block, an end marker without a start, a
/// marker without exactly two words or an unknown kind is an error naming the line.
pub fn parse(text: &str) -> anyhow::Result<Vec<Block>> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String, Kind, usize)> = None;
    let mut in_fence = false;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let n = i + 1;
        let start_of_line = offset;
        offset += line.len();
        let t = line.trim();
        if t.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if let Some(rest) = t.strip_prefix(START) {
            if let Some((l, name, kind, _)) = &open {
                bail!("line {n}: a block starts before the block `{name} {}` of line {l} ends", kind.word());
            }
            let Some(words) = rest.strip_suffix("-->") else {
                bail!("line {n}: the marker does not end in `-->` on its line");
            };
            let words: Vec<&str> = words.split_whitespace().collect();
            let [name, kind] = words[..] else {
                bail!("line {n}: a marker names a result and a table kind (`{START} lab-veth summary -->`)");
            };
            let Some(kind) = Kind::parse(kind) else {
                bail!("line {n}: unknown table kind `{kind}` (summary, cpu-curve, dns)");
            };
            open = Some((n, name.to_string(), kind, offset));
        } else if t == END {
            let Some((line, name, kind, body_start)) = open.take() else {
                bail!("line {n}: an end marker without a start marker");
            };
            blocks.push(Block { line, name, kind, body: body_start..start_of_line });
        } else if t.starts_with("<!-- end shunt-bench") {
            bail!("line {n}: a malformed end marker (it is `{END}`)");
        }
    }
    if let Some((l, name, kind, _)) = open {
        bail!("line {l}: the block `{name} {}` is not terminated (no `{END}` after it)", kind.word());
    }
    Ok(blocks)
}

/// A block whose text differs from what its result file gives.
#[derive(Debug, Clone)]
pub struct Stale {
    /// Line of its start marker.
    pub line: usize,
    /// `NAME KIND`.
    pub block: String,
    /// What it holds.
    pub old: String,
    /// What it should hold.
    pub new: String,
}

impl Stale {
    /// A few `-` / `+` lines: the old lines missing from the new text and the new ones missing from the old.
    pub fn diff(&self) -> String {
        const MAX: usize = 6;
        let mut out = Vec::new();
        for (sign, from, other) in [('-', &self.old, &self.new), ('+', &self.new, &self.old)] {
            let lines: Vec<&str> =
                from.lines().filter(|l| !l.trim().is_empty() && !other.lines().any(|o| o == *l)).collect();
            for l in lines.iter().take(MAX) {
                out.push(format!("  {sign} {l}"));
            }
            if lines.len() > MAX {
                out.push(format!("  {sign} ... {} more line(s)", lines.len() - MAX));
            }
        }
        out.join("\n")
    }
}

/// `text` with every block regenerated (`md_dir`: the directory of the file, for links to the pages), and the
/// blocks that changed.
pub fn rewrite(text: &str, md_dir: &Path, results: &Path) -> anyhow::Result<(String, Vec<Stale>)> {
    let blocks = parse(text)?;
    let mut loaded: BTreeMap<String, Comparison> = BTreeMap::new();
    let mut out = String::with_capacity(text.len());
    let mut stale = Vec::new();
    let mut at = 0;
    for b in blocks {
        if !loaded.contains_key(&b.name) {
            let path = results.join(format!("{}.json", b.name));
            let json = std::fs::read_to_string(&path).with_context(|| {
                format!("line {}: block `{} {}`: reading {}", b.line, b.name, b.kind.word(), path.display())
            })?;
            let cmp: Comparison = serde_json::from_str(&json).with_context(|| format!("parsing {}", path.display()))?;
            loaded.insert(b.name.clone(), cmp);
        }
        let page = relative(md_dir, &results.join(format!("{}.md", b.name)));
        let new = render(&loaded[&b.name], b.kind, &page);
        let old = &text[b.body.clone()];
        if old != new {
            stale.push(Stale {
                line: b.line,
                block: format!("{} {}", b.name, b.kind.word()),
                old: old.to_string(),
                new: new.clone(),
            });
        }
        out += &text[at..b.body.start];
        out += &new;
        at = b.body.end;
    }
    out += &text[at..];
    Ok((out, stale))
}

/// `tables`: rewrite the blocks of each file, or with `--check` report the stale ones (exit 1).
pub fn run(a: TablesArgs) -> anyhow::Result<ExitCode> {
    let results = absolute(&a.results)?;
    let mut stale_blocks = 0;
    for f in &a.files {
        let stale = check_or_write(f, &results, !a.check)?;
        for s in &stale {
            if a.check {
                println!(
                    "{}:{}: block `{}` is stale (run `make results-tables`):\n{}",
                    f.display(),
                    s.line,
                    s.block,
                    s.diff()
                );
            } else {
                println!("{}:{}: rewrote block `{}`", f.display(), s.line, s.block);
            }
        }
        stale_blocks += stale.len();
    }
    if a.check && stale_blocks > 0 {
        println!("{stale_blocks} stale block(s)");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Regenerates the blocks of `file` from the result files in `results` (absolute); writes the file when
/// `write` and anything changed. Returns the blocks that were (or, without `write`, are) stale.
pub fn check_or_write(file: &Path, results: &Path, write: bool) -> anyhow::Result<Vec<Stale>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let dir = absolute(file)?.parent().map(Path::to_path_buf).unwrap_or_default();
    let (new, stale) = rewrite(&text, &dir, results).with_context(|| format!("{}", file.display()))?;
    if write && new != text {
        std::fs::write(file, new).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(stale)
}

/// `p` made absolute against the current directory, `.` and `..` resolved by name (no symlinks followed, so a
/// link computed from it is the one a reader of the repository follows).
fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The relative link from directory `from` to file `to` (both absolute, normalized), with `/` separators.
fn relative(from: &Path, to: &Path) -> String {
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); f.len() - common];
    parts.extend(t[common..].iter().map(|c| c.as_os_str().to_string_lossy().into_owned()));
    parts.join("/")
}

/// The generated text of a block: a blank line, the table and its legend (or why there is none), a blank line,
/// the source line, a blank line (so the markers stay separate HTML blocks and the table a table).
fn render(c: &Comparison, kind: Kind, page: &str) -> String {
    let body = match kind {
        Kind::Summary => summary(c),
        Kind::CpuCurve => cpu_curve(c),
        Kind::Dns => dns(c),
    };
    format!("\n{}\n\n{}\n\n", body.trim_end(), source_line(c, page))
}

/// `Source: [page](page), made by `command` on DATE (kernel ..., cpu ..., lab ..., shunt commit ...); verdict: ...`
fn source_line(c: &Comparison, page: &str) -> String {
    let machine: Vec<&str> = c
        .machine
        .iter()
        .map(String::as_str)
        .filter(|l| ["kernel:", "cpu:", "lab:", "shunt commit:"].iter().any(|k| l.starts_with(k)))
        .collect();
    let date = c.started.get(..10).unwrap_or(&c.started);
    format!(
        "Source: [{page}]({page}), made by `{}` on {date} ({}); verdict: {}.",
        c.command,
        if machine.is_empty() { "no machine description in the result file".into() } else { machine.join("; ") },
        verdict::summary(&c.findings)
    )
}

/// The rates of the sweep, from the parameters the comparison ran with.
fn sweep_rates(c: &Comparison) -> Vec<f64> {
    c.params.get("rates").map(|r| r.split(',').filter_map(|x| parse_rate(x).ok()).collect()).unwrap_or_default()
}

/// The page's fixed offered rates: the sweep's lowest and middle ones.
fn fixed_rates(c: &Comparison) -> Vec<f64> {
    let rates = sweep_rates(c);
    let mut fixed: Vec<f64> = rates.first().copied().into_iter().collect();
    if rates.len() > 1 {
        fixed.push(rates[rates.len() / 2]);
    }
    fixed
}

/// What a target is, from its description: the part before the first `:`, `,` or ` (` (`shunt --mode socket --io
/// epoll`, `sockperf server --nonblocked`).
fn what_it_is(description: &str) -> String {
    let end = [":", ",", " ("].iter().filter_map(|sep| description.find(sep)).min().unwrap_or(description.len());
    let what = description[..end].trim();
    if what.is_empty() {
        "–".into()
    } else {
        format!("`{what}`")
    }
}

/// Why a target has no figures: the first part of its first error (before the ` | ` that joins log lines).
fn did_not_run(c: &Comparison, s: &TargetSummary) -> String {
    let e = compare::first_error(c, &s.name);
    format!("did not run: {}", e.split(" | ").next().unwrap_or(&e).replace('|', "/"))
}

/// The highest loss-free rate as the page gives it, ` ⚠` when the generator fell behind at that rate or above
/// (where the sweep stopped finding it loss-free: the server's own limit may be higher).
fn max_rate_cell(s: &TargetSummary, base: Option<&TargetSummary>) -> String {
    const K: &str = "max_rate_loss_lt_0.1pct";
    let v = s.figures.get(K).copied();
    let cell = compare::fmt_fig(v, base.and_then(|b| b.figures.get(K).copied()), "kpps");
    match v {
        Some(v) if s.generator_behind_at.iter().any(|&r| r >= v) => format!("{cell} ⚠"),
        _ => cell,
    }
}

fn summary(c: &Comparison) -> String {
    let base = c.summaries.iter().find(|s| s.name == c.plan.baseline);
    if c.summaries.iter().all(|s| s.figures.is_empty()) {
        return format!("No figures in {}.json: no target produced any.", c.name);
    }
    let loads = compare::loads_of(&c.params);
    let mut m =
        String::from("| target | what it is | ping-pong p50 µs | ping-pong p99 µs | max rate, loss < 0.1 % (kpps) |");
    if let Some(l) = loads.first() {
        m += &format!(" server CPU ns/reply @ {0} pps | all cores ns/reply @ {0} pps |", l.label());
    }
    let cols = if loads.is_empty() { 5 } else { 7 };
    m += "\n|";
    m += &"---|".repeat(cols);
    m += "\n";
    for s in &c.summaries {
        let what =
            c.plan.targets.iter().find(|t| t.name == s.name).map_or("–".into(), |t| what_it_is(&t.description));
        if s.figures.is_empty() {
            m += &format!("| {} | {what} | {} |{}\n", s.name, did_not_run(c, s), " – |".repeat(cols - 3));
            continue;
        }
        let f =
            |k: &str| compare::fmt_fig(s.figures.get(k).copied(), base.and_then(|b| b.figures.get(k).copied()), "us");
        m += &format!("| {} | {what} | {} | {} | {} |", s.name, f("pp_p50_us"), f("pp_p99_us"), max_rate_cell(s, base));
        if let Some(l) = loads.first() {
            let warn = if s.figures.contains_key(&format!("cpu_generator_behind@{}", l.key())) { " ⚠" } else { "" };
            for k in ["cpu_server_ns", "cpu_all_cores_ns"] {
                let v = compare::cpu_fig(s, k, l, 0);
                let b = base.and_then(|b| compare::cpu_fig(b, k, l, 0));
                m += &format!(" {}{} |", compare::fmt_fig(v, b, "ns"), if v.is_some() { warn } else { "" });
            }
        }
        m += "\n";
    }
    m += &format!(
        "\nMedians over {} repetition(s). Ping-pong: round trip with one request outstanding, at most {} req/s. Max \
         rate: the highest offered open-loop rate with loss < 0.1 %. ",
        c.params.get("reps").map_or("?", String::as_str),
        c.params.get("pp_rate").map_or("?", String::as_str),
    );
    match loads.first() {
        Some(l) => {
            m += &format!(
                "CPU: the server process's CPU time and every core's busy time per reply at {} req/s, the lightest \
                 load measured. ",
                l.label()
            )
        }
        None => m += &format!("No CPU-phase readings in {}.json, so no CPU columns. ", c.name),
    }
    m += &format!("Ratios: value / value of the baseline `{}`.", c.plan.baseline);
    if c.summaries
        .iter()
        .any(|s| !s.generator_behind_at.is_empty() || s.figures.keys().any(|k| k.starts_with("cpu_generator_behind@")))
    {
        m += " ⚠: the generator, not the server, fell behind (max rate: at that rate or above, so the server's own \
              limit may be higher; CPU: in that run).";
    }
    m + "\n"
}

fn cpu_curve(c: &Comparison) -> String {
    let loads = compare::loads_of(&c.params);
    if loads.is_empty() || c.summaries.iter().all(|s| !s.figures.keys().any(|k| k.starts_with("cpu_server_ns"))) {
        return format!("No CPU-phase readings in {}.json (run with `--cpu-rate`): no CPU curve.", c.name);
    }
    let base = c.summaries.iter().find(|s| s.name == c.plan.baseline);
    let mut m = compare::cpu_grid(c, &loads, base);
    m += &format!(
        "\nServer CPU ns per reply / all cores ns per reply at each offered load, median over repetitions (ratio of \
         the server figure to the baseline `{}`'s; `max`: the highest loss-free rate of that target's sweep, at the \
         rate shown). ⚠: the generator fell behind in that run, so the load was the generator's.",
        c.plan.baseline
    );
    // Busy time per reply (the workers' turns that found work) tells a spinning target's work from its idle
    // spinning: the grid shows it in its cells where the run read it from the server's own counters.
    if c.summaries.iter().any(|s| s.figures.keys().any(|k| k.starts_with("cpu_busy_ns"))) {
        m += " (busy N): the server's workers' busy time per reply (turns that found work, from its own counters; \
              `io_uring` does its receives and sends inside the call it waits in, so its figure is the user-space \
              part alone).\n";
    } else {
        m += &format!(
            " Busy ns per reply: not in {}.json (its CPU phase read the server's process and the cores from outside \
             only).\n",
            c.name
        );
    }
    m
}

fn dns(c: &Comparison) -> String {
    let is_dns = |name: &str| c.plan.targets.iter().any(|t| t.name == name && t.dns_queries(&c.plan).is_some());
    if !c.summaries.iter().any(|s| is_dns(&s.name)) {
        return format!("{}.json is not a DNS comparison: no target has a query file.", c.name);
    }
    let fixed = fixed_rates(c);
    let loads = compare::loads_of(&c.params);
    let dp: Vec<CpuLoad> = c
        .params
        .get("dnsperf_rates")
        .map(|r| compare::cpu_loads(&r.split(',').filter_map(|x| compare::parse_cpu_load(x).ok()).collect::<Vec<_>>()))
        .unwrap_or_default();
    let mut m = String::from("| target | max qps, loss < 0.1 % (k): shunt-bench | dnsperf |");
    for r in &fixed {
        m += &format!(" p50 / p99 µs @ {} |", compare::rate_label(*r));
    }
    m += &format!(
        " server CPU ns/query @ {} |\n|---|---|---|",
        if loads.is_empty() { "–".into() } else { loads.iter().map(CpuLoad::label).collect::<Vec<_>>().join(" / ") }
    );
    m += &"---|".repeat(fixed.len() + 1);
    m += "\n";
    for s in c.summaries.iter().filter(|s| is_dns(&s.name)) {
        if s.figures.is_empty() {
            m += &format!("| {} | {} |{}\n", s.name, did_not_run(c, s), " – |".repeat(fixed.len() + 2));
            continue;
        }
        // dnsperf: the highest qps completed at a load where it lost < 0.1 %.
        let best = dp
            .iter()
            .filter_map(|l| {
                let f = |n: &str| s.figures.get(&format!("{n}@{}", l.key())).copied();
                let (q, loss) = (f("dnsperf_qps")?, f("dnsperf_loss_pct")?);
                (loss < 0.1).then_some((q, f("dnsperf_limited").is_some()))
            })
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let dnsperf =
            best.map_or("–".into(), |(q, limited)| format!("{:.1}{}", q / 1e3, if limited { " ⚠" } else { "" }));
        m += &format!("| {} | {} | {dnsperf} |", s.name, max_rate_cell(s, None));
        for r in &fixed {
            m += &format!(" {} |", compare::sweep_latency_cell(s, *r));
        }
        let cpu: Vec<String> = loads
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let v = compare::cpu_fig(s, "cpu_server_ns", l, i);
                let warn = v.is_some() && s.figures.contains_key(&format!("cpu_generator_behind@{}", l.key()));
                format!("{}{}", compare::fmt_fig(v, None, "ns"), if warn { " ⚠" } else { "" })
            })
            .collect();
        m += &format!(" {} |\n", if cpu.is_empty() { "–".into() } else { cpu.join(" / ") });
    }
    m += &format!(
        "\nMedians over {} repetition(s), the same zone and queries for every server. shunt-bench: open loop, every \
         answer checked, latency from the intended send time. dnsperf: the highest qps it completed at any of its \
         loads ({}) while losing < 0.1 %; at `max` it sends as fast as it can, so the figure may be dnsperf's own \
         limit (the page gives the server's CPU share). ⚠: the generator, not the server, fell behind (max qps: at \
         that rate or above; p50 / p99: at that rate; CPU: in that run).",
        c.params.get("reps").map_or("?", String::as_str),
        if dp.is_empty() { "none ran".into() } else { dp.iter().map(CpuLoad::label).collect::<Vec<_>>().join(", ") },
    );
    m + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        absolute(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).unwrap()
    }

    fn results() -> PathBuf {
        repo().join("bench/results")
    }

    /// The rule of the project: every table in README.md and docs/ is what its result file gives today.
    #[test]
    fn readme_and_docs_tables_are_not_stale() {
        let root = repo();
        let mut files = vec![root.join("README.md")];
        let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        docs.sort();
        files.extend(docs);
        let mut blocks = 0;
        let mut problems = Vec::new();
        for f in &files {
            blocks += parse(&std::fs::read_to_string(f).unwrap()).map_or(0, |b| b.len());
            match check_or_write(f, &results(), false) {
                Ok(stale) => problems.extend(
                    stale.iter().map(|s| format!("{}:{}: `{}` is stale:\n{}", f.display(), s.line, s.block, s.diff())),
                ),
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        assert!(problems.is_empty(), "run `make results-tables`:\n{}", problems.join("\n"));
        assert!(blocks >= 4, "README.md and docs/performance.md hold the lab-veth and dns tables; found {blocks}");
    }

    #[test]
    fn parses_two_blocks_with_their_bodies() {
        let text = "a\n<!-- shunt-bench tables: lab-veth summary -->\nold\n<!-- end shunt-bench tables -->\n\
                    ```\n<!-- shunt-bench tables: not a block -->\n```\n\
                    <!-- shunt-bench tables: dns dns -->\n<!-- end shunt-bench tables -->\nz\n";
        let b = parse(text).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].line, b[0].name.as_str(), b[0].kind), (2, "lab-veth", Kind::Summary));
        assert_eq!(&text[b[0].body.clone()], "old\n");
        assert_eq!((b[1].line, b[1].name.as_str(), b[1].kind), (8, "dns", Kind::Dns));
        assert_eq!(&text[b[1].body.clone()], "");
    }

    #[test]
    fn refuses_malformed_blocks() {
        let err = |t: &str| format!("{:#}", parse(t).unwrap_err());
        let e = err("x\n<!-- shunt-bench tables: lab-veth summary -->\nbody\n");
        assert!(e.contains("line 2") && e.contains("not terminated"), "{e}");
        let e = err("<!-- shunt-bench tables: lab-veth histogram -->\n<!-- end shunt-bench tables -->\n");
        assert!(e.contains("unknown table kind `histogram`"), "{e}");
        let e = err("<!-- shunt-bench tables: lab-veth -->\n<!-- end shunt-bench tables -->\n");
        assert!(e.contains("line 1") && e.contains("a result and a table kind"), "{e}");
        let e = err("<!-- end shunt-bench tables -->\n");
        assert!(e.contains("without a start"), "{e}");
        let e = err("<!-- shunt-bench tables: a summary -->\n<!-- shunt-bench tables: b summary -->\n");
        assert!(e.contains("line 2") && e.contains("`a summary` of line 1"), "{e}");
    }

    #[test]
    fn fills_blocks_once_and_then_changes_nothing() {
        let text = "# t\n\n<!-- shunt-bench tables: lab-veth summary -->\n<!-- end shunt-bench tables -->\n\nmid\n\n\
                    <!-- shunt-bench tables: lab-veth cpu-curve -->\nhand-written 1234\n<!-- end shunt-bench tables -->\n";
        let dir = repo().join("docs");
        let (once, stale) = rewrite(text, &dir, &results()).unwrap();
        assert_eq!(stale.len(), 2);
        assert!(stale[1].diff().contains("- hand-written 1234"), "{}", stale[1].diff());
        assert!(once.starts_with("# t\n\n<!-- shunt-bench tables: lab-veth summary -->\n\n| target |"));
        assert!(once.contains("\n\nmid\n\n"));
        assert!(!once.contains("hand-written"));
        assert!(once.contains("Source: [../bench/results/lab-veth.md](../bench/results/lab-veth.md), made by `"));
        let (twice, stale) = rewrite(&once, &dir, &results()).unwrap();
        assert_eq!(twice, once);
        assert!(stale.is_empty());
    }

    #[test]
    fn a_missing_result_file_is_an_error() {
        let text = "<!-- shunt-bench tables: no-such-result summary -->\n<!-- end shunt-bench tables -->\n";
        let e = format!("{:#}", rewrite(text, &repo(), &results()).unwrap_err());
        assert!(e.contains("line 1") && e.contains("no-such-result.json"), "{e}");
    }

    fn lab_veth() -> Comparison {
        serde_json::from_str(&std::fs::read_to_string(results().join("lab-veth.json")).unwrap()).unwrap()
    }

    #[test]
    fn cells_read_as_on_the_page() {
        let c = lab_veth();
        let page = std::fs::read_to_string(results().join("lab-veth.md")).unwrap();
        let t = summary(&c);
        // The baseline's ping-pong p50 and the CPU figure at the lightest load, as the page's main table has them.
        let b = &c.summaries.iter().find(|s| s.name == c.plan.baseline).unwrap();
        let p50 = compare::fmt_fig(b.figures.get("pp_p50_us").copied(), b.figures.get("pp_p50_us").copied(), "us");
        assert!(page.contains(&format!("| {} | {p50} |", b.name)), "{p50}");
        assert!(t.contains(&format!("| {} | `shunt --mode socket --io blocking` | {p50} |", b.name)), "{t}");
        // The CPU curve is the page's CPU table, row for row.
        let grid = cpu_curve(&c);
        for row in grid.lines().filter(|l| l.starts_with("| ")) {
            assert!(page.contains(row), "{row}");
        }
        // Busy time: its own table where the result file has it, a plain sentence where it does not.
        let has_busy = c.summaries.iter().any(|s| s.figures.keys().any(|k| k.starts_with("cpu_busy_ns")));
        assert_eq!(grid.contains("Busy ns per reply: not in lab-veth.json"), !has_busy, "{grid}");
    }

    #[test]
    fn missing_data_is_said_not_invented() {
        let mut c = lab_veth();
        c.params.remove("cpu_rates");
        c.params.remove("cpu_rate");
        assert!(cpu_curve(&c).starts_with("No CPU-phase readings in lab-veth.json"));
        assert!(!summary(&c).contains("ns/reply"));
        assert!(dns(&c).contains("not a DNS comparison"));
        // Busy time read for one target at one load only: the other cells say so with a dash.
        let mut c = lab_veth();
        for s in &mut c.summaries {
            s.figures.retain(|k, _| !k.starts_with("cpu_busy_ns"));
        }
        assert!(cpu_curve(&c).contains("Busy ns per reply: not in lab-veth.json"));
        let s = c.summaries.iter_mut().find(|s| s.name == "afxdp-spin").unwrap();
        s.figures.insert("cpu_busy_ns@20000".into(), 812.4);
        let curve = cpu_curve(&c);
        let row = curve.lines().find(|l| l.starts_with("| afxdp-spin |")).unwrap();
        assert_eq!(row.matches("(busy ").count(), 1, "{row}");
        assert!(row.contains("(busy 812)"), "{row}");
        assert!(curve.contains("(busy N): the server's workers' busy time"), "{curve}");
    }

    #[test]
    fn dns_rows_include_the_one_that_did_not_run() {
        let c: Comparison =
            serde_json::from_str(&std::fs::read_to_string(results().join("dns.json")).unwrap()).unwrap();
        let t = dns(&c);
        let row = t.lines().find(|l| l.starts_with("| knot-xdp |")).unwrap();
        assert!(row.contains("did not run: knot-xdp exited without answering"), "{row}");
        // Every target has its row, with the header's six cells, whatever figures the latest run has.
        for s in &c.summaries {
            let row = t.lines().find(|l| l.starts_with(&format!("| {} |", s.name))).unwrap_or_else(|| panic!("{t}"));
            assert_eq!(row.matches(" | ").count() + 1, 6, "{row}");
        }
    }

    #[test]
    fn links_are_relative_to_the_markdown_file() {
        let r = Path::new("/r/bench/results/lab-veth.md");
        assert_eq!(relative(Path::new("/r"), r), "bench/results/lab-veth.md");
        assert_eq!(relative(Path::new("/r/docs"), r), "../bench/results/lab-veth.md");
        assert_eq!(absolute(Path::new("/r/docs/../bench/./results")).unwrap(), Path::new("/r/bench/results"));
    }

    #[test]
    fn what_a_target_is() {
        assert_eq!(what_it_is("shunt --mode socket --io epoll: kernel UDP socket"), "`shunt --mode socket --io epoll`");
        assert_eq!(what_it_is("sockperf server --nonblocked, kernel UDP socket"), "`sockperf server --nonblocked`");
        assert_eq!(what_it_is("dpdk-testpmd 5tswap on X (a, b), lcore 1"), "`dpdk-testpmd 5tswap on X`");
        assert_eq!(what_it_is(""), "–");
    }
}

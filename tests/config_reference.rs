//! The configuration reference (docs/configuration.md), the annotated example (config/example.toml) and the
//! config types (src/control/config.rs) describe the same keys with the same defaults.
//!
//! The keys are derived from the code, not listed here: the types deny unknown fields, and serde's refusal of
//! an unknown key lists every field the table has, optional ones included; `--print-config`'s output (the
//! defaults as TOML) gives each default, and leaves out the keys that have none. The flags come from
//! `shunt serve --help`: a flag that overrides a key names it in backticks in its help.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use shunt::control::config::Config;
use toml::{Table, Value};

/// A key no config type has: what serde's refusal of it lists is the table's fields.
const PROBE: &str = "__shunt_probe__";

/// The interface and ports the defaults are printed with (the two keys without a default).
const INTERFACE: &str = "eth0";
const PORTS: [u16; 1] = [9000];

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_file(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// The text of every `` `...` `` span in `text`, in order.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// A one-value TOML document's value: how a default written in the page or the example is compared.
fn parse_value(text: &str) -> Result<Value, String> {
    let doc: Table = toml::from_str(&format!("v = {text}")).map_err(|e| e.message().to_string())?;
    Ok(doc["v"].clone())
}

/// The table at `path` in `doc`, created where missing.
fn table_at<'a>(doc: &'a mut Table, path: &[&str]) -> &'a mut Table {
    path.iter().fold(doc, |t, p| {
        t.entry(*p).or_insert_with(|| Value::Table(Table::new())).as_table_mut().expect("a table on the path")
    })
}

/// Deserializes `doc` as a [`Config`] (without [`Config::validate`]: only the schema is asked about), giving
/// serde's message on failure.
fn deserialize(doc: &Table) -> Result<Config, String> {
    let text = toml::to_string(doc).expect("a table prints as TOML");
    toml::from_str::<Config>(&text).map_err(|e| e.message().to_string())
}

/// The fields of the table at dotted `path` ([] for the top level), read from serde's refusal of an unknown
/// key there; `None` when `path` is not a table (a value, a list, an enum).
fn fields_of(path: &[&str]) -> Option<Vec<String>> {
    let mut doc = Table::new();
    table_at(&mut doc, path).insert(PROBE.to_string(), Value::Integer(0));
    let message = deserialize(&doc).expect_err("an unknown key is refused");
    let rest = message.strip_prefix(&format!("unknown field `{PROBE}`, "))?;
    if rest.starts_with("there are no fields") {
        return Some(Vec::new());
    }
    let names = rest.strip_prefix("expected ").unwrap_or_else(|| panic!("unexpected message format: {message}"));
    Some(backticked(names).into_iter().map(str::to_string).collect())
}

/// Every leaf key (a value, not a table) the config types have, dotted, found by walking down from the top.
fn schema_keys() -> BTreeSet<String> {
    fn walk(path: &mut Vec<String>, out: &mut BTreeSet<String>) {
        let here: Vec<&str> = path.iter().map(String::as_str).collect();
        let fields = fields_of(&here).unwrap_or_else(|| panic!("`{}` is not a table", here.join(".")));
        assert!(!fields.is_empty() || !path.is_empty(), "no fields found in the top-level table");
        for f in fields {
            path.push(f);
            let below: Vec<&str> = path.iter().map(String::as_str).collect();
            if fields_of(&below).is_some() {
                walk(path, out);
            } else {
                out.insert(path.join("."));
            }
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(&mut Vec::new(), &mut out);
    out
}

/// The leaf values of `table`, by dotted key.
fn flatten(table: &Table, prefix: &str, out: &mut BTreeMap<String, Value>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            Value::Table(t) => flatten(t, &key, out),
            _ => {
                out.insert(key, v.clone());
            }
        }
    }
}

/// `table` without the value at dotted `key`.
fn without(table: &Table, key: &str) -> Table {
    let mut t = table.clone();
    let parts: Vec<&str> = key.split('.').collect();
    let (last, path) = parts.split_last().expect("a key");
    table_at(&mut t, path).remove(*last);
    t
}

/// What the code says about its keys.
struct Code {
    /// Every key, dotted.
    keys: BTreeSet<String>,
    /// The default of each key that has one, as `shunt serve --print-config` prints it with no config file.
    defaults: BTreeMap<String, Value>,
    /// The keys a config must set (no default: the file, or --interface / --port, gives them).
    required: BTreeSet<String>,
    /// The allowed values of each key that takes one of a set of names.
    variants: BTreeMap<String, Vec<String>>,
}

impl Code {
    fn read() -> Code {
        let keys = schema_keys();
        let config = Config::defaults_for(INTERFACE, &PORTS).expect("the built-in defaults are valid");
        let printed: Table = toml::from_str(&config.to_toml()).expect("the printed config is TOML");
        let mut defaults = BTreeMap::new();
        flatten(&printed, "", &mut defaults);
        for key in defaults.keys() {
            assert!(keys.contains(key), "`{key}` is printed by --print-config but was not found in the types");
        }
        let mut required = BTreeSet::new();
        let mut variants = BTreeMap::new();
        for (key, value) in &defaults {
            match deserialize(&without(&printed, key)) {
                Ok(_) => {}
                Err(m) if m.starts_with(&format!("missing field `{}`", key.rsplit('.').next().unwrap())) => {
                    required.insert(key.clone());
                }
                Err(m) => panic!("leaving out `{key}` fails for another reason: {m}"),
            }
            if value.is_str() {
                let mut probe = printed.clone();
                let parts: Vec<&str> = key.split('.').collect();
                let (last, path) = parts.split_last().unwrap();
                table_at(&mut probe, path).insert(last.to_string(), Value::String(PROBE.to_string()));
                if let Err(m) = deserialize(&probe) {
                    if let Some(names) = m.strip_prefix(&format!("unknown variant `{PROBE}`, expected ")) {
                        variants.insert(key.clone(), backticked(names).into_iter().map(str::to_string).collect());
                    }
                }
            }
        }
        for key in &required {
            defaults.remove(key);
        }
        Code { keys, defaults, required, variants }
    }

    /// What the code gives `key` when a config leaves it out.
    fn default_of(&self, key: &str) -> KeyDefault {
        match self.defaults.get(key) {
            Some(v) => KeyDefault::Value(v.clone()),
            None if self.required.contains(key) => KeyDefault::Required,
            None => KeyDefault::Unset,
        }
    }
}

/// A key's default, as the code has it or a document states it.
#[derive(Debug, Clone, PartialEq)]
enum KeyDefault {
    /// This value.
    Value(Value),
    /// None: every config sets the key.
    Required,
    /// None: left out, the feature it configures is off or chosen at start-up.
    Unset,
}

impl std::fmt::Display for KeyDefault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyDefault::Value(v) => write!(f, "`{v}`"),
            KeyDefault::Required => f.write_str("required"),
            KeyDefault::Unset => f.write_str("unset"),
        }
    }
}

/// The key each `shunt serve` flag overrides, read from the flags' help (`--help` prints each doc comment in
/// full): the first word of a backticked span that is a config key.
fn flags_by_key(code: &Code) -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new(env!("CARGO_BIN_EXE_shunt")).args(["serve", "--help"]).output().expect("run shunt");
    assert!(out.status.success(), "shunt serve --help: {}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8(out.stdout).expect("UTF-8 help");
    // An option's block: its `-c, --config <CONFIG>` line (indented less than the help text) and the help
    // lines below it, up to its "Possible values:" (their descriptions name other keys: `socket.batch`).
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut in_values = false;
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        if trimmed.starts_with('-') && indent < 8 {
            let flag = trimmed.split([' ', ',']).find(|w| w.starts_with("--")).expect("a long flag").to_string();
            blocks.push((flag, String::new()));
            in_values = false;
        } else if trimmed == "Possible values:" {
            in_values = true;
        } else if let Some((_, text)) = blocks.last_mut().filter(|_| !in_values) {
            text.push_str(line);
            text.push('\n');
        }
    }
    assert!(blocks.len() > 5, "no options found in shunt serve --help:\n{help}");
    let mut by_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (flag, text) in blocks {
        for span in backticked(&text) {
            let word = span.split_whitespace().next().unwrap_or_default();
            if code.keys.contains(word) {
                by_key.entry(word.to_string()).or_default().insert(flag.clone());
            }
        }
    }
    by_key
}

/// One row of a key table in docs/configuration.md.
struct Row {
    line: usize,
    heading: String,
    key: String,
    kind: String,
    default: String,
    flags: String,
}

/// The rows of the page's key tables: every table row whose first cell is a backticked key. A key table has
/// five columns: key, type, default, flag, meaning.
fn reference_rows(page: &str) -> Result<Vec<Row>, Vec<String>> {
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    let mut heading = String::new();
    for (i, line) in page.lines().enumerate() {
        if let Some(h) = line.strip_prefix("## ") {
            heading = h.to_string();
        }
        if !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() != 5 {
            problems.push(format!("docs/configuration.md:{}: {} cells, not 5 (a `|` in a cell?)", i + 1, cells.len()));
            continue;
        }
        let key = cells[0].trim_matches('`');
        rows.push(Row {
            line: i + 1,
            heading: heading.clone(),
            key: key.to_string(),
            kind: cells[1].to_string(),
            default: cells[2].to_string(),
            flags: cells[3].to_string(),
        });
    }
    if problems.is_empty() {
        Ok(rows)
    } else {
        Err(problems)
    }
}

/// A default cell: `required`, `unset`, or the TOML value in the cell's first backticked span (free text may
/// follow it).
fn stated_default(cell: &str) -> Result<KeyDefault, String> {
    match cell {
        "required" => Ok(KeyDefault::Required),
        "unset" => Ok(KeyDefault::Unset),
        _ if cell.starts_with('`') => {
            let value = backticked(cell).first().copied().unwrap_or_default();
            parse_value(value).map(KeyDefault::Value).map_err(|e| format!("`{value}` is not a TOML value: {e}"))
        }
        _ => Err(format!("{cell:?} is neither `required`, `unset` nor a backticked TOML value")),
    }
}

fn fail_on(problems: Vec<String>, what: &str) {
    assert!(problems.is_empty(), "{what} drifted from the code:\n  {}", problems.join("\n  "));
}

#[test]
fn the_reference_page_documents_every_key_its_default_and_its_flag() {
    let code = Code::read();
    let flags = flags_by_key(&code);
    let page = read("docs/configuration.md");
    let rows = reference_rows(&page).unwrap_or_else(|p| panic!("{}", p.join("\n")));
    let mut problems = Vec::new();
    let mut seen = BTreeMap::new();
    for row in &rows {
        let at = format!("docs/configuration.md:{}: `{}`", row.line, row.key);
        if let Some(first) = seen.insert(row.key.clone(), row.line) {
            problems.push(format!("{at} is documented twice (first on line {first})"));
        }
        if !code.keys.contains(&row.key) {
            problems.push(format!("{at} is documented, but the config types have no such key"));
            continue;
        }
        // The key's table is the section's: `## \`[xdp]\`` holds the xdp.* keys.
        let section = match row.key.rsplit_once('.') {
            Some((table, _)) => format!("[{table}]"),
            None => "Top-level".to_string(),
        };
        if !row.heading.contains(&section) {
            problems.push(format!("{at} is under the heading {:?}, not its table's ({section})", row.heading));
        }
        match stated_default(&row.default) {
            Ok(stated) => {
                let actual = code.default_of(&row.key);
                if stated != actual {
                    problems.push(format!("{at}: the page says the default is {stated}, the code {actual}"));
                }
            }
            Err(e) => problems.push(format!("{at}: default cell: {e}")),
        }
        let documented: BTreeSet<String> =
            backticked(&row.flags).into_iter().filter(|s| s.starts_with("--")).map(str::to_string).collect();
        let actual = flags.get(&row.key).cloned().unwrap_or_default();
        for f in documented.difference(&actual) {
            problems.push(format!("{at}: the page names {f}, but `shunt serve --help` has no {f} overriding it"));
        }
        for f in actual.difference(&documented) {
            problems.push(format!("{at}: `shunt serve --help` has {f} overriding it, the page does not say so"));
        }
        for name in code.variants.get(&row.key).into_iter().flatten() {
            if !row.kind.contains(&format!("`\"{name}\"`")) {
                problems.push(format!("{at}: the code accepts `\"{name}\"`, the type cell does not list it"));
            }
        }
    }
    for key in &code.keys {
        if !seen.contains_key(key) {
            problems.push(format!("`{key}` is in the config types but not documented in docs/configuration.md"));
        }
    }
    fail_on(problems, "docs/configuration.md");
}

#[test]
fn the_example_sets_or_shows_every_key_with_the_code_defaults() {
    let code = Code::read();
    let text = read("config/example.toml");
    Config::parse(&text, "config/example.toml").unwrap_or_else(|e| panic!("config/example.toml is invalid: {e}"));
    let mut problems = Vec::new();

    let set: Table = toml::from_str(&text).expect("TOML");
    let mut active = BTreeMap::new();
    flatten(&set, "", &mut active);
    for (key, value) in &active {
        match code.default_of(key) {
            _ if !code.keys.contains(key) => problems.push(format!("`{key}` is set, the config types lack it")),
            KeyDefault::Value(d) if d != *value => {
                problems.push(format!("`{key}` is set to `{value}`, but its default is `{d}`"))
            }
            KeyDefault::Unset => problems.push(format!(
                "`{key}` has no default but is set to `{value}`: show it commented out (`# {} = {value}`)",
                key.rsplit('.').next().unwrap()
            )),
            _ => {}
        }
    }

    // Keys without a default are shown commented out, `# key = value` in their table's section, with an example
    // value; taking the `# ` away must give a valid config that sets them to that value.
    let mut shown = BTreeMap::new();
    let mut uncommented = String::new();
    let mut table = String::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && trimmed.ends_with(']') {
            table = trimmed.trim_matches(['[', ']']).to_string();
        }
        let commented = line.strip_prefix("# ").and_then(|l| l.split_once(" = ")).filter(|(k, _)| {
            k.starts_with(|c: char| c.is_ascii_lowercase())
                && k.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        });
        match commented {
            Some((name, value)) => {
                let key = if table.is_empty() { name.to_string() } else { format!("{table}.{name}") };
                match parse_value(value) {
                    Ok(v) => {
                        shown.insert(key, v);
                    }
                    Err(e) => problems.push(format!("config/example.toml:{}: `{key}`: {e}", i + 1)),
                }
                uncommented.push_str(&line[2..]);
            }
            None => uncommented.push_str(line),
        }
        uncommented.push('\n');
    }
    for key in shown.keys() {
        match code.default_of(key) {
            _ if !code.keys.contains(key) => problems.push(format!("`{key}` is shown, the config types lack it")),
            KeyDefault::Unset => {}
            d => problems.push(format!("`{key}` is commented out, but it is not an unset key (default {d})")),
        }
    }
    match Config::parse(&uncommented, "config/example.toml, uncommented") {
        Ok(config) => {
            let printed: Table = toml::from_str(&config.to_toml()).expect("TOML");
            let mut values = BTreeMap::new();
            flatten(&printed, "", &mut values);
            for (key, value) in &shown {
                match values.get(key) {
                    Some(v) if v == value => {}
                    Some(v) => problems.push(format!("uncommenting `{key}` = {value} sets it to {v}")),
                    None => problems.push(format!("uncommenting `{key}` = {value} leaves it unset")),
                }
            }
        }
        Err(e) => problems.push(format!("config/example.toml with its commented keys uncommented is invalid: {e}")),
    }

    for key in &code.keys {
        if !active.contains_key(key) && !shown.contains_key(key) {
            problems.push(format!("`{key}` is in the config types but neither set nor shown in config/example.toml"));
        }
    }
    fail_on(problems, "config/example.toml");
}

//! Output safety: the post-execution check of a job's result against the
//! policy's `output_rules` (upstream's `CheckOutput`, spec §1.10).
//!
//! Rules are compiled once at load (regexes, keyword matchers, scanner
//! selection). A check walks the enabled rules in order and the first match
//! wins; no match allows. A rule matches when every present predicate holds:
//! tenants, topics (input-rule globs), capabilities, risk_tags (any),
//! has_error, the size threshold, and each present content kind (content
//! patterns, keywords, scanners) has at least one finding.
//!
//! Content is the output's JSON text: only string values are scanned (keys,
//! numbers and the JSON syntax are not), each decoded from its literal, and
//! findings carry byte offsets and lengths into the original text. Output
//! that is not JSON is scanned as one plain string. Redaction rewrites only
//! the affected string literals, so the rest of the text (key order,
//! formatting) is kept.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compile::Policy;
use crate::doc::OutputRuleDoc;
use crate::glob::Glob;

/// What replaces a redacted span.
pub const REDACTED: &str = "[REDACTED]";

/// At most this many findings are reported per decision (redaction still
/// covers every match).
pub const MAX_FINDINGS: usize = 100;

const REASON_DISABLED: &str = "output policy disabled";
const REASON_NO_MATCH: &str = "no matching output rule";

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// A finished job's result, as checked by [`Policy::check_output`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutputRequest {
    pub topic: String,
    pub tenant: String,
    pub capability: String,
    pub risk_tags: Vec<String>,
    /// The result as JSON text (plain text is scanned as one string).
    pub output: String,
    /// The worker's error code or message; empty when the job succeeded.
    pub error: String,
}

/// The outcome of an output check. `Deny` stays distinct from `Quarantine`
/// (upstream folds deny into quarantine; this gateway keeps the rule's word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputDecisionKind {
    Allow,
    Redact,
    Quarantine,
    Deny,
}

impl OutputDecisionKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            OutputDecisionKind::Allow => "allow",
            OutputDecisionKind::Redact => "redact",
            OutputDecisionKind::Quarantine => "quarantine",
            OutputDecisionKind::Deny => "deny",
        }
    }

    fn from_doc(s: &str) -> Self {
        match s {
            "allow" => OutputDecisionKind::Allow,
            "redact" => OutputDecisionKind::Redact,
            "deny" => OutputDecisionKind::Deny,
            _ => OutputDecisionKind::Quarantine,
        }
    }
}

/// Something the deciding rule found in the output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// `secret`, `pii`, `injection`, `pattern`, `keyword` or `size`.
    pub kind: String,
    /// Human-readable account, with the JSON path of the string value.
    pub detail: String,
    /// The policy's pattern or keyword, or the scanner's pattern name; never
    /// the matched text itself.
    pub matched: String,
    /// Byte offset and length in the output text (for JSON: of the match's
    /// raw, still escaped, span inside its string literal).
    pub offset: u32,
    pub length: u32,
}

/// The result of [`Policy::check_output`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputDecision {
    pub kind: OutputDecisionKind,
    /// Id of the deciding rule; empty when no rule matched.
    pub rule_id: String,
    pub reason: String,
    /// Findings of the deciding rule, ordered by offset, at most
    /// [`MAX_FINDINGS`].
    pub findings: Vec<Finding>,
    /// For `Redact`: the output as JSON text with every match replaced by
    /// `[REDACTED]` (plain-text output comes back as a JSON string).
    pub redacted_output: Option<String>,
}

impl OutputDecision {
    fn plain(reason: &str) -> Self {
        OutputDecision {
            kind: OutputDecisionKind::Allow,
            rule_id: String::new(),
            reason: reason.to_owned(),
            findings: Vec::new(),
            redacted_output: None,
        }
    }
}

// ---------------------------------------------------------------------------
// Built-in scanners
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scanner {
    Secret,
    Pii,
    Injection,
}

impl Scanner {
    /// A scanner or detector name, with upstream's aliases.
    fn parse(name: &str) -> Option<Scanner> {
        let n = name.trim().to_ascii_lowercase();
        match n.as_str() {
            "secret" | "secret_leak" | "secrets" => Some(Scanner::Secret),
            "pii" => Some(Scanner::Pii),
            "injection" | "code_injection" => Some(Scanner::Injection),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scanner::Secret => "secret",
            Scanner::Pii => "pii",
            Scanner::Injection => "injection",
        }
    }

    fn patterns(self) -> &'static [(&'static str, Regex)] {
        match self {
            Scanner::Secret => &SECRET,
            Scanner::Pii => &PII,
            Scanner::Injection => &INJECTION,
        }
    }
}

fn builtin(list: &[(&'static str, &str)]) -> Vec<(&'static str, Regex)> {
    list.iter().map(|(name, re)| (*name, Regex::new(re).expect("built-in scanner pattern"))).collect()
}

static SECRET: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    builtin(&[
        ("aws_access_key_id", r"(?-u:\b)(?:AKIA|ASIA)[0-9A-Z]{16}(?-u:\b)"),
        ("private_key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        ("github_token", r"(?-u:\b)gh[pousr]_[A-Za-z0-9]{36,}"),
        ("slack_token", r"(?-u:\b)xox[abposr]-[A-Za-z0-9-]{10,}"),
        ("google_api_key", r"(?-u:\b)AIza[0-9A-Za-z_-]{35}"),
        ("generic_credential", r"(?i)(api[_-]?key|secret|token|password)\s*[:=]\s*\S{8,}"),
    ])
});

static PII: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    builtin(&[
        ("email", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
        ("us_ssn", r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)"),
        // Checked with Luhn afterwards.
        ("card_number", r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)"),
    ])
});

static INJECTION: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    builtin(&[
        ("script_tag", r"(?i)<script"),
        ("ignore_previous_instructions", r"(?i)ignore\s+(?:all\s+)?previous\s+instructions"),
        ("sql_drop_table", r"(?i)'\s*;\s*drop\s+table"),
    ])
});

/// JSON keys whose string value is itself a credential (the secret scanner
/// reports the whole value when it is 8+ non-blank characters).
static CREDENTIAL_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^(?:[a-z0-9]+[_.-])*(?:api[_-]?key|secret|secret[_-]?key|client[_-]?secret|secret[_-]?access[_-]?key|private[_-]?key|token|access[_-]?token|auth[_-]?token|refresh[_-]?token|id[_-]?token|bearer[_-]?token|session[_-]?token|password|passwd|pwd)$",
    )
    .expect("credential key pattern")
});

/// Luhn checksum over the digits of `s` (separators ignored).
fn luhn(s: &str) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    for c in s.bytes().rev().filter(u8::is_ascii_digit) {
        let mut d = u32::from(c - b'0');
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
    }
    sum.is_multiple_of(10)
}

/// Whether a string value under a credential key looks like a credential:
/// 8+ characters, no blanks, not a mask.
fn credential_value(value: &str) -> bool {
    let v = value.trim();
    v.len() >= 8
        && v.chars().count() >= 8
        && !v.chars().any(char::is_whitespace)
        && v != REDACTED
        && !v.chars().all(|c| c == '*' || c == 'x' || c == 'X')
}

/// A loose pre-check for [`CREDENTIAL_KEY`] over a whole text.
static CREDENTIAL_HINT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)key|secret|token|passw|pwd").expect("credential hint pattern"));

// ---------------------------------------------------------------------------
// Compiled rules
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pattern,
    Keyword,
    Scanner(Scanner),
    Size,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Pattern => "pattern",
            Kind::Keyword => "keyword",
            Kind::Scanner(s) => s.as_str(),
            Kind::Size => "size",
        }
    }
}

/// One enabled output rule, compiled.
#[derive(Debug, Clone)]
pub(crate) struct OutputRule {
    id: String,
    kind: OutputDecisionKind,
    reason: String,
    tenants: Vec<String>,
    topics: Vec<Glob>,
    capabilities: Vec<String>,
    risk_tags: Vec<String>,
    has_error: Option<bool>,
    /// Matches when the output is longer than this many bytes.
    size_gt: Option<u64>,
    /// (pattern, anchored: uses `^`/`$`/`\A`/`\z`, so no whole-text
    /// pre-check)
    patterns: Vec<(Regex, bool)>,
    /// (keyword as written, case-insensitive literal matcher)
    keywords: Vec<(String, Regex)>,
    /// `scanners` + `detectors` were given (even if none is known).
    wants_scanners: bool,
    scanners: Vec<Scanner>,
}

/// Whether a pattern may depend on where the haystack starts or ends, so a
/// match inside one string value need not show in a larger text.
fn anchored(pattern: &str) -> bool {
    pattern.contains(['^', '$']) || pattern.contains("\\A") || pattern.contains("\\z")
}

fn trimmed(l: Option<Vec<String>>) -> Vec<String> {
    l.unwrap_or_default().into_iter().map(|s| s.trim().to_owned()).collect()
}

/// Compile the merged `output_rules` (JSON objects as validated at parse
/// time). Disabled rules are left out, invalid content patterns dropped and
/// a rule whose every pattern is invalid dropped; the notes say what.
pub(crate) fn compile(rules: &[Value]) -> (Vec<OutputRule>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for (i, v) in rules.iter().enumerate() {
        let doc: OutputRuleDoc = match serde_json::from_value(v.clone()) {
            Ok(d) => d,
            Err(e) => {
                notes.push(format!("output_rules[{i}]: {e}; rule dropped"));
                continue;
            }
        };
        if doc.enabled == Some(false) {
            continue;
        }
        let id = doc.id.as_deref().map(str::trim).unwrap_or("").to_owned();
        let name = if id.is_empty() { format!("output rule #{i}") } else { format!("output rule {id:?}") };
        let m = doc.match_.unwrap_or_default();

        let mut patterns = Vec::new();
        let written = m.content_patterns.unwrap_or_default();
        for p in &written {
            if p.trim().is_empty() {
                notes.push(format!("{name}: empty content pattern dropped"));
                continue;
            }
            match RegexBuilder::new(p).build() {
                Ok(re) => patterns.push((re, anchored(p))),
                Err(e) => notes.push(format!(
                    "{name}: content pattern {p:?} is not a valid regex ({}); pattern dropped",
                    e.to_string().lines().last().unwrap_or("invalid").trim()
                )),
            }
        }
        if !written.is_empty() && patterns.is_empty() {
            notes.push(format!("{name}: every content pattern is invalid; rule dropped"));
            continue;
        }

        let keywords = m
            .keywords
            .unwrap_or_default()
            .into_iter()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .filter_map(|k| RegexBuilder::new(&regex::escape(&k)).case_insensitive(true).build().ok().map(|re| (k, re)))
            .collect();

        let names: Vec<String> =
            m.scanners.unwrap_or_default().into_iter().chain(m.detectors.unwrap_or_default()).collect();
        let mut scanners = Vec::new();
        for n in &names {
            match Scanner::parse(n) {
                Some(s) if !scanners.contains(&s) => scanners.push(s),
                Some(_) => {}
                None => notes.push(format!(
                    "{name}: unknown scanner {n:?} finds nothing (known: secret, secret_leak, pii, injection, code_injection)"
                )),
            }
        }
        if m.content_types.as_ref().is_some_and(|c| !c.is_empty()) {
            notes.push(format!("{name}: match.content_types is not evaluated (outputs carry no content type)"));
        }

        let size_gt = match (m.output_size_gt, m.max_output_bytes) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).max(b.unwrap_or(0))),
        };
        let kind = doc
            .decision
            .as_ref()
            .map(|d| OutputDecisionKind::from_doc(d.as_str()))
            .unwrap_or(OutputDecisionKind::Quarantine);
        out.push(OutputRule {
            id,
            kind,
            reason: doc.reason.unwrap_or_default(),
            tenants: trimmed(m.tenants),
            topics: m.topics.unwrap_or_default().iter().map(|p| Glob::new(p)).collect(),
            capabilities: trimmed(m.capabilities),
            risk_tags: trimmed(m.risk_tags),
            has_error: m.has_error,
            size_gt,
            patterns,
            keywords,
            wants_scanners: !names.is_empty(),
            scanners,
        });
    }
    (out, notes)
}

fn fold_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
        || (!(a.is_ascii() && b.is_ascii())
            && a.chars().flat_map(char::to_lowercase).eq(b.chars().flat_map(char::to_lowercase)))
}

impl OutputRule {
    fn has_content_predicates(&self) -> bool {
        !self.patterns.is_empty() || !self.keywords.is_empty() || self.wants_scanners
    }

    /// The metadata predicates (everything but size and content).
    fn meta_matches(&self, tenant: &str, topic: &str, req: &OutputRequest) -> bool {
        if !self.tenants.is_empty() && (tenant.is_empty() || !self.tenants.iter().any(|t| fold_eq(t, tenant))) {
            return false;
        }
        if !self.topics.is_empty() && !self.topics.iter().any(|g| g.matches(topic)) {
            return false;
        }
        if !self.capabilities.is_empty() {
            let cap = req.capability.trim();
            if cap.is_empty() || !self.capabilities.iter().any(|c| fold_eq(c, cap)) {
                return false;
            }
        }
        if !self.risk_tags.is_empty() && !req.risk_tags.iter().any(|t| self.risk_tags.iter().any(|r| r == t.trim())) {
            return false;
        }
        if let Some(want) = self.has_error
            && want == req.error.trim().is_empty()
        {
            return false;
        }
        true
    }

    /// Scan `content` for this rule's content kinds. `None` when a present
    /// kind found nothing. With `redact`, every match span is collected.
    ///
    /// Each matcher is first tried once on the whole text (one pass instead
    /// of one search per string value); only matchers that can match there
    /// run over the values.
    fn scan(&self, content: &mut Content<'_>, redact: bool) -> Option<Scan> {
        let patterns: Vec<&Regex> = self
            .patterns
            .iter()
            .filter(|(re, anchored)| *anchored || content.hay_match(re))
            .map(|(re, _)| re)
            .collect();
        let keywords: Vec<&(String, Regex)> = self.keywords.iter().filter(|(_, re)| content.hay_match(re)).collect();
        let mut builtins: Vec<(Scanner, &'static str, &'static Regex)> = Vec::new();
        for &s in &self.scanners {
            for (i, (name, re)) in s.patterns().iter().enumerate() {
                if content.builtin_match(s, i) {
                    builtins.push((s, name, re));
                }
            }
        }
        let secret_fields = self.scanners.contains(&Scanner::Secret) && content.credential_hint();
        // Which present kinds have findings: patterns, keywords, scanners.
        let want = [!self.patterns.is_empty(), !self.keywords.is_empty(), self.wants_scanners];
        if (want[0] && patterns.is_empty())
            || (want[1] && keywords.is_empty())
            || (want[2] && builtins.is_empty() && !secret_fields)
        {
            return None;
        }
        let satisfied = |have: &[bool; 3]| want.iter().zip(have).all(|(w, h)| !w || *h);

        content.ensure_lits();
        let content = &*content;
        let lits = content.lits.as_ref()?;
        let mut scan = Scan::new(lits.lits.len(), redact);
        let mut have = [false; 3];
        for (li, lit) in lits.lits.iter().enumerate() {
            let text = content.value(lit);
            if text.is_empty() {
                continue;
            }
            for re in &patterns {
                for m in re.find_iter(text) {
                    if m.is_empty() {
                        continue;
                    }
                    have[0] = true;
                    if !scan.record(Kind::Pattern, re.as_str(), li, m.start(), m.end()) {
                        break;
                    }
                }
            }
            for (kw, re) in &keywords {
                for m in re.find_iter(text) {
                    have[1] = true;
                    if !scan.record(Kind::Keyword, kw, li, m.start(), m.end()) {
                        break;
                    }
                }
            }
            if secret_fields
                && credential_value(text)
                && content.key(lits, lit).is_some_and(|k| CREDENTIAL_KEY.is_match(&k))
            {
                have[2] = true;
                let kind = Kind::Scanner(Scanner::Secret);
                scan.record(kind, "credential_field", li, 0, text.len());
            }
            for &(s, name, re) in &builtins {
                for m in re.find_iter(text) {
                    if m.is_empty() || (name == "card_number" && !luhn(m.as_str())) {
                        continue;
                    }
                    have[2] = true;
                    if !scan.record(Kind::Scanner(s), name, li, m.start(), m.end()) {
                        break;
                    }
                }
            }
            if !redact && scan.full() && satisfied(&have) {
                break;
            }
        }
        satisfied(&have).then_some(scan)
    }
}

/// Hits of one rule's scan.
struct Scan {
    hits: Vec<Hit>,
    /// Merged redaction spans per literal (decoded byte offsets).
    spans: Option<Vec<Vec<(usize, usize)>>>,
}

struct Hit {
    kind: Kind,
    matched: String,
    lit: usize,
    start: usize,
    end: usize,
}

impl Scan {
    fn new(lits: usize, redact: bool) -> Scan {
        Scan { hits: Vec::new(), spans: redact.then(|| vec![Vec::new(); lits]) }
    }

    fn full(&self) -> bool {
        self.hits.len() >= MAX_FINDINGS
    }

    /// Record a match; false when the caller may stop iterating matches of
    /// this matcher (findings are full and nothing is being redacted).
    fn record(&mut self, kind: Kind, matched: &str, lit: usize, start: usize, end: usize) -> bool {
        if let Some(spans) = self.spans.as_mut() {
            let v = &mut spans[lit];
            match v.last_mut() {
                Some(last) if start >= last.0 && start <= last.1 => last.1 = last.1.max(end),
                _ => v.push((start, end)),
            }
        }
        if !self.full() {
            self.hits.push(Hit { kind, matched: matched.to_owned(), lit, start, end });
            true
        } else {
            self.spans.is_some()
        }
    }
}

// ---------------------------------------------------------------------------
// Content: the string values of the output
// ---------------------------------------------------------------------------

/// One string to scan: a JSON string value, or the whole plain-text output.
struct Lit {
    /// Byte range of the whole token in the output (quotes included for
    /// JSON literals).
    token: (usize, usize),
    /// The decoded value: a byte range of `Content::haystack`.
    value: (usize, usize),
    /// Enclosing container (index into the node list, [`NO_NODE`] at the
    /// top level).
    node: usize,
    /// The value's place in that container.
    seg: Seg,
}

/// Where a value sits in its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg {
    /// The whole output (plain text).
    Text,
    /// The top-level JSON value.
    Root,
    /// Under a key: the byte range of the key literal's content.
    Key(usize, usize),
    Index(usize),
}

const NO_NODE: usize = usize::MAX;

/// A JSON object or array: its container and its place there.
struct Node {
    parent: usize,
    seg: Seg,
}

/// The string values of the output, with their containers.
struct Lits {
    lits: Vec<Lit>,
    nodes: Vec<Node>,
}

struct Content<'a> {
    text: &'a str,
    json: bool,
    /// A text in which every string value occurs as a substring, bounded by
    /// non-word characters: the output itself when it has no escapes, else
    /// the decoded strings (keys too) joined by newlines.
    haystack: Cow<'a, str>,
    /// Built on first need (when some matcher can match at all).
    lits: Option<Lits>,
    credential_hint: Option<bool>,
    /// Whole-haystack results of the built-in scanner patterns, per scanner
    /// (secret, pii, injection), computed once per check.
    builtin: [Vec<Option<bool>>; 3],
}

impl<'a> Content<'a> {
    fn new(text: &'a str) -> Content<'a> {
        let json = !text.trim().is_empty() && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
        let haystack = if json && text.contains('\\') {
            // Every literal, keys too, in the order `json_strings` visits them.
            let b = text.as_bytes();
            let mut h = String::with_capacity(text.len());
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'"' {
                    let end = literal_end(b, i);
                    decode_append(literal_content(text, i, end), &mut h);
                    h.push('\n');
                    i = end;
                } else {
                    i += 1;
                }
            }
            Cow::Owned(h)
        } else {
            Cow::Borrowed(text)
        };
        Content { text, json, haystack, lits: None, credential_hint: None, builtin: Default::default() }
    }

    /// Build the string values (once).
    fn ensure_lits(&mut self) {
        let (text, json) = (self.text, self.json);
        let decoded = matches!(self.haystack, Cow::Owned(_));
        self.lits.get_or_insert_with(|| {
            if json {
                json_strings(text, decoded)
            } else {
                let lit = Lit { token: (0, text.len()), value: (0, text.len()), node: NO_NODE, seg: Seg::Text };
                Lits { lits: vec![lit], nodes: Vec::new() }
            }
        });
    }

    /// Whether the text may hold a credential key at all (cached).
    fn credential_hint(&mut self) -> bool {
        *self.credential_hint.get_or_insert_with(|| CREDENTIAL_HINT.is_match(&self.haystack))
    }

    /// A value, decoded.
    fn value(&self, lit: &Lit) -> &str {
        &self.haystack[lit.value.0..lit.value.1]
    }

    /// Offset of a value's first content byte in the output.
    fn content_start(&self, lit: &Lit) -> usize {
        if self.json { lit.token.0 + 1 } else { 0 }
    }

    /// A value's content as written (JSON escapes still in).
    fn raw(&self, lit: &Lit) -> &'a str {
        if self.json { literal_content(self.text, lit.token.0, lit.token.1) } else { self.text }
    }

    /// Decoded byte index -> raw byte offset from the content start
    /// (`value.len() + 1` entries); `None` when the two coincide.
    fn offsets(&self, lit: &Lit) -> Option<Vec<u32>> {
        let raw = self.raw(lit);
        raw.contains('\\').then(|| decoded_offsets(raw))
    }

    /// The object key a value sits under; array items inherit the key of
    /// their array.
    fn key(&self, lits: &Lits, lit: &Lit) -> Option<Cow<'a, str>> {
        let (mut node, mut seg) = (lit.node, lit.seg);
        loop {
            match seg {
                Seg::Key(s, e) => return Some(decode(&self.text[s..e])),
                Seg::Index(_) if node != NO_NODE => {
                    seg = lits.nodes[node].seg;
                    node = lits.nodes[node].parent;
                }
                _ => return None,
            }
        }
    }

    /// The JSON path (`$.a["b c"][0]`); empty for plain text.
    fn path(&self, lits: &Lits, lit: &Lit) -> String {
        if lit.seg == Seg::Text {
            return String::new();
        }
        let mut segs = vec![lit.seg];
        let mut n = lit.node;
        while n != NO_NODE {
            segs.push(lits.nodes[n].seg);
            n = lits.nodes[n].parent;
        }
        let mut path = String::from("$");
        for seg in segs.into_iter().rev() {
            match seg {
                Seg::Text | Seg::Root => {}
                Seg::Key(s, e) => push_key(&mut path, &decode(&self.text[s..e])),
                Seg::Index(i) => {
                    path.push('[');
                    path.push_str(&i.to_string());
                    path.push(']');
                }
            }
        }
        path
    }

    /// Whether `re` matches somewhere in the haystack: false means it
    /// matches no string value (for patterns without text anchors).
    fn hay_match(&self, re: &Regex) -> bool {
        re.is_match(&self.haystack)
    }

    fn builtin_match(&mut self, s: Scanner, i: usize) -> bool {
        let slot = match s {
            Scanner::Secret => 0,
            Scanner::Pii => 1,
            Scanner::Injection => 2,
        };
        let cache = &mut self.builtin[slot];
        if cache.len() <= i {
            cache.resize(s.patterns().len().max(i + 1), None);
        }
        if let Some(hit) = cache[i] {
            return hit;
        }
        let hit = s.patterns()[i].1.is_match(&self.haystack);
        self.builtin[slot][i] = Some(hit);
        hit
    }

    /// The output with every span (per value, decoded byte offsets)
    /// replaced by [`REDACTED`], as JSON text.
    fn redact(&self, spans: &[Vec<(usize, usize)>]) -> String {
        let lits = self.lits.as_ref().map_or(&[][..], |l| &l.lits[..]);
        if !self.json {
            return match (lits.first(), spans.first()) {
                (Some(lit), Some(spans)) if !spans.is_empty() => quote(&replace_spans(self.value(lit), spans)),
                _ => quote(self.text),
            };
        }
        let mut out = String::with_capacity(self.text.len());
        let mut cursor = 0;
        for (lit, spans) in lits.iter().zip(spans) {
            if !spans.is_empty() {
                out.push_str(&self.text[cursor..lit.token.0]);
                out.push_str(&quote(&replace_spans(self.value(lit), spans)));
                cursor = lit.token.1;
            }
        }
        out.push_str(&self.text[cursor..]);
        out
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn replace_spans(value: &str, spans: &[(usize, usize)]) -> String {
    let mut sorted = spans.to_vec();
    sorted.sort_unstable();
    // Merge overlapping and touching spans.
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(sorted.len());
    for (s, e) in sorted {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let mut out = String::with_capacity(value.len());
    let mut cursor = 0;
    for (s, e) in merged {
        out.push_str(&value[cursor..s]);
        out.push_str(REDACTED);
        cursor = e;
    }
    out.push_str(&value[cursor..]);
    out
}

/// A JSON path segment for `key`.
fn push_key(path: &mut String, key: &str) {
    let ident = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ident {
        path.push('.');
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&quote(key));
        path.push(']');
    }
}

struct Frame {
    array: bool,
    /// This container's index in the node list.
    node: usize,
    /// Objects: the byte range of the latest key's content.
    key: Option<(usize, usize)>,
    index: usize,
}

/// The container and place of the next value.
fn place(stack: &[Frame]) -> (usize, Seg) {
    match stack.last() {
        Some(f) if f.array => (f.node, Seg::Index(f.index)),
        Some(f) => (f.node, f.key.map_or(Seg::Root, |(s, e)| Seg::Key(s, e))),
        None => (NO_NODE, Seg::Root),
    }
}

/// The string values of a valid JSON text, in order, and its containers.
/// With `decoded`, value ranges point into the decoded haystack (every
/// literal decoded, followed by a newline); else into `text` itself.
fn json_strings(text: &str, decoded: bool) -> Lits {
    let b = text.as_bytes();
    let mut cursor = 0;
    let mut lits = Vec::new();
    let mut nodes = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let end = literal_end(b, i);
                let mut j = end;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                let is_key = j < b.len() && b[j] == b':' && stack.last().is_some_and(|f| !f.array);
                let raw = literal_content(text, i, end);
                let value = if decoded {
                    let start = cursor;
                    cursor += decoded_len(raw) + 1;
                    (start, cursor - 1)
                } else {
                    (i + 1, i + 1 + raw.len())
                };
                if is_key {
                    if let Some(f) = stack.last_mut() {
                        f.key = Some((i + 1, end.saturating_sub(1).max(i + 1)));
                    }
                } else {
                    let (node, seg) = place(&stack);
                    lits.push(Lit { token: (i, end), value, node, seg });
                }
                i = end;
            }
            c @ (b'{' | b'[') => {
                let (parent, seg) = place(&stack);
                nodes.push(Node { parent, seg });
                stack.push(Frame { array: c == b'[', node: nodes.len() - 1, key: None, index: 0 });
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                i += 1;
            }
            b',' => {
                if let Some(f) = stack.last_mut()
                    && f.array
                {
                    f.index += 1;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    Lits { lits, nodes }
}

/// The content of the literal token `text[start..end]` (quotes dropped).
fn literal_content(text: &str, start: usize, end: usize) -> &str {
    &text[start + 1..end.saturating_sub(1).max(start + 1)]
}

/// Index just past the closing quote of the literal opening at `start`.
fn literal_end(b: &[u8], start: usize) -> usize {
    let mut k = start + 1;
    while k < b.len() {
        match b[k] {
            b'\\' => k += 2,
            b'"' => return k + 1,
            _ => k += 1,
        }
    }
    b.len()
}

fn hex4(s: &str, at: usize) -> Option<u32> {
    s.get(at..at + 4).and_then(|h| u32::from_str_radix(h, 16).ok())
}

/// A piece of a JSON string literal's content, with its raw byte offset.
enum Piece<'a> {
    /// Characters without escapes.
    Run(&'a str, usize),
    /// One escape sequence, decoded.
    Escaped(char, usize),
}

/// Walk a JSON string literal's content as runs and decoded escapes.
fn decode_pieces<'a>(raw: &'a str, mut f: impl FnMut(Piece<'a>)) {
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match raw[i..].find('\\') {
            Some(0) => {
                let (c, n) = escape_at(raw, i);
                f(Piece::Escaped(c, i));
                i = (i + n).min(b.len());
            }
            Some(k) => {
                f(Piece::Run(&raw[i..i + k], i));
                i += k;
            }
            None => {
                f(Piece::Run(&raw[i..], i));
                break;
            }
        }
    }
}

/// The escape sequence at `raw[i]` (a backslash): its character and length.
fn escape_at(raw: &str, i: usize) -> (char, usize) {
    let b = raw.as_bytes();
    match b.get(i + 1) {
        Some(b'"') => ('"', 2),
        Some(b'\\') => ('\\', 2),
        Some(b'/') => ('/', 2),
        Some(b'b') => ('\u{8}', 2),
        Some(b'f') => ('\u{c}', 2),
        Some(b'n') => ('\n', 2),
        Some(b'r') => ('\r', 2),
        Some(b't') => ('\t', 2),
        Some(b'u') => match hex4(raw, i + 2) {
            Some(hi @ 0xD800..=0xDBFF) => {
                let lo = raw
                    .get(i + 6..i + 8)
                    .filter(|s| *s == "\\u")
                    .and_then(|_| hex4(raw, i + 8))
                    .filter(|lo| (0xDC00..=0xDFFF).contains(lo));
                match lo {
                    Some(lo) => {
                        (char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)).unwrap_or('\u{FFFD}'), 12)
                    }
                    None => ('\u{FFFD}', 6),
                }
            }
            Some(u) => (char::from_u32(u).unwrap_or('\u{FFFD}'), 6),
            None => ('\u{FFFD}', 2),
        },
        // Not valid JSON (it was validated): skip the next character whole.
        _ => ('\u{FFFD}', 1 + raw.get(i + 1..).and_then(|r| r.chars().next()).map_or(0, char::len_utf8)),
    }
}

/// Decode a JSON string literal's content (borrowed when it has no escapes).
fn decode(raw: &str) -> Cow<'_, str> {
    if raw.contains('\\') {
        let mut out = String::with_capacity(raw.len());
        decode_append(raw, &mut out);
        Cow::Owned(out)
    } else {
        Cow::Borrowed(raw)
    }
}

fn decode_append(raw: &str, out: &mut String) {
    decode_pieces(raw, |p| match p {
        Piece::Run(s, _) => out.push_str(s),
        Piece::Escaped(c, _) => out.push(c),
    });
}

fn decoded_len(raw: &str) -> usize {
    let mut n = 0;
    decode_pieces(raw, |p| match p {
        Piece::Run(s, _) => n += s.len(),
        Piece::Escaped(c, _) => n += c.len_utf8(),
    });
    n
}

/// For each decoded byte, the raw offset it came from, plus the raw length.
fn decoded_offsets(raw: &str) -> Vec<u32> {
    let mut map = Vec::with_capacity(raw.len() + 1);
    decode_pieces(raw, |p| match p {
        Piece::Run(s, at) => map.extend((at..at + s.len()).map(|i| i as u32)),
        Piece::Escaped(c, at) => map.extend(std::iter::repeat_n(at as u32, c.len_utf8())),
    });
    map.push(raw.len() as u32);
    map
}

// ---------------------------------------------------------------------------
// The check
// ---------------------------------------------------------------------------

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl OutputRule {
    fn decision(
        &self,
        size: Option<Finding>,
        scan: Option<Scan>,
        content: Option<&Content<'_>>,
        output: &str,
    ) -> OutputDecision {
        let mut findings: Vec<Finding> = size.into_iter().collect();
        let mut redacted = None;
        if let Some(scan) = scan {
            let content = content.expect("content scanned");
            let lits = content.lits.as_ref().expect("values listed");
            // Offsets and path of the literal of the previous hit (hits come
            // grouped by literal).
            let mut last: Option<(usize, Option<Vec<u32>>, String)> = None;
            for h in &scan.hits {
                let lit = &lits.lits[h.lit];
                if last.as_ref().is_none_or(|(l, _, _)| *l != h.lit) {
                    last = Some((h.lit, content.offsets(lit), content.path(lits, lit)));
                }
                let Some((_, map, path)) = last.as_ref() else { continue };
                let raw = |d: usize| map.as_ref().map_or(d, |m| m.get(d).copied().unwrap_or(0) as usize);
                let (rs, re) = (raw(h.start), raw(h.end));
                let place = if path.is_empty() { "the output text".to_owned() } else { path.clone() };
                let detail = match h.kind {
                    Kind::Pattern => format!("content pattern matched in {place}"),
                    Kind::Keyword => format!("keyword found in {place}"),
                    Kind::Scanner(s) => {
                        format!("{} scanner: {} in {place}", s.as_str(), h.matched)
                    }
                    Kind::Size => String::new(),
                };
                findings.push(Finding {
                    kind: h.kind.as_str().to_owned(),
                    detail,
                    matched: h.matched.clone(),
                    offset: to_u32(content.content_start(lit) + rs),
                    length: to_u32(re.saturating_sub(rs)),
                });
            }
            if let Some(spans) = &scan.spans {
                redacted = Some(content.redact(spans));
            }
        }
        findings.sort_by_key(|f| (f.offset, f.length));
        findings.truncate(MAX_FINDINGS);
        if self.kind == OutputDecisionKind::Redact && redacted.is_none() {
            // Nothing to replace (a size- or metadata-only rule).
            redacted = Some(match content {
                Some(c) => c.redact(&[]),
                None => Content::new(output).redact(&[]),
            });
        }
        let reason = if self.reason.trim().is_empty() {
            if self.id.is_empty() {
                format!("output rule matched: {}", self.kind.as_str())
            } else {
                format!("output rule \"{}\" matched: {}", self.id, self.kind.as_str())
            }
        } else {
            self.reason.clone()
        };
        OutputDecision { kind: self.kind, rule_id: self.id.clone(), reason, findings, redacted_output: redacted }
    }
}

impl Policy {
    /// Check a finished job's output: the first matching enabled output rule
    /// decides; no match (or output checks disabled) allows.
    pub fn check_output(&self, req: &OutputRequest) -> OutputDecision {
        if !self.output_policy_enabled() {
            return OutputDecision::plain(REASON_DISABLED);
        }
        let topic = req.topic.trim();
        let tenant = match req.tenant.trim() {
            "" => match self.default_tenant.trim() {
                "" => "default",
                t => t,
            },
            t => t,
        };
        let size = req.output.len() as u64;
        let mut content: Option<Content<'_>> = None;
        for rule in &self.output_checks {
            if !rule.meta_matches(tenant, topic, req) {
                continue;
            }
            let size_finding = match rule.size_gt {
                Some(limit) if size <= limit => continue,
                Some(limit) => Some(Finding {
                    kind: Kind::Size.as_str().to_owned(),
                    detail: format!("output is {size} bytes, over the {limit}-byte limit"),
                    matched: format!("> {limit} bytes"),
                    offset: 0,
                    length: to_u32(req.output.len()),
                }),
                None => None,
            };
            let scan = if rule.has_content_predicates() {
                let c = content.get_or_insert_with(|| Content::new(&req.output));
                match rule.scan(c, rule.kind == OutputDecisionKind::Redact) {
                    Some(s) => Some(s),
                    None => continue,
                }
            } else {
                None
            };
            return rule.decision(size_finding, scan, content.as_ref(), &req.output);
        }
        OutputDecision::plain(REASON_NO_MATCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_paths_keys_and_offsets() {
        let text = r#"{"a": {"b c": ["x", 1, "y", [{"k": "z"}]]}, "token": "v\"w", "n": null}"#;
        let mut c = Content::new(text);
        c.ensure_lits();
        let lits = c.lits.as_ref().unwrap();
        let got: Vec<(String, &str, Option<String>)> =
            lits.lits.iter().map(|l| (c.path(lits, l), c.value(l), c.key(lits, l).map(|k| k.into_owned()))).collect();
        let want = [
            (r#"$.a["b c"][0]"#, "x", Some("b c")),
            (r#"$.a["b c"][2]"#, "y", Some("b c")),
            (r#"$.a["b c"][3][0].k"#, "z", Some("k")),
            ("$.token", "v\"w", Some("token")),
        ];
        let want: Vec<(String, &str, Option<String>)> =
            want.iter().map(|(p, v, k)| (p.to_string(), *v, k.map(str::to_owned))).collect();
        assert_eq!(got, want);
        let l = &lits.lits[3];
        assert_eq!(&text[l.token.0..l.token.1], r#""v\"w""#);
        assert_eq!(c.raw(l), r#"v\"w"#);
        // 'w' is decoded byte 2, raw byte 3.
        let map = c.offsets(l).unwrap();
        assert_eq!((map[2], map[3]), (3, 4));
        assert!(c.offsets(&lits.lits[0]).is_none());
        // The haystack holds every decoded string.
        assert_eq!(c.haystack, "a\nb c\nx\ny\nk\nz\ntoken\nv\"w\nn\n");
    }

    #[test]
    fn decode_escapes_and_surrogates() {
        let raw = r"a\u00e9\ud83d\ude00\nb";
        let v = decode(raw);
        assert_eq!(v, "aé😀\nb");
        assert_eq!(decoded_len(raw), v.len());
        let map = decoded_offsets(raw);
        assert_eq!(map.len(), v.len() + 1);
        // 'b' sits at raw offset 1 + 6 + 12 + 2.
        assert_eq!(map[v.len() - 1], 21);
        assert_eq!(*map.last().unwrap(), 22);
        let v = decode(r"\ud800x");
        assert_eq!(v, "\u{FFFD}x");
        // Invalid escapes (never in validated JSON) do not split characters.
        assert_eq!(decode(r"\éa"), "\u{FFFD}a");
        assert_eq!(decoded_offsets("xé"), [0, 1, 2, 3]);
    }

    #[test]
    fn top_level_string_and_scalars() {
        let mut c = Content::new(r#""hello""#);
        c.ensure_lits();
        let lits = c.lits.as_ref().unwrap();
        assert_eq!(lits.lits.len(), 1);
        assert_eq!(c.path(lits, &lits.lits[0]), "$");
        assert!(json_strings("42", false).lits.is_empty());
    }

    #[test]
    fn replace_spans_merges_overlaps() {
        assert_eq!(replace_spans("abcdef", &[(1, 3), (2, 4)]), "a[REDACTED]ef");
        assert_eq!(replace_spans("abcdef", &[(4, 6), (0, 1)]), "[REDACTED]bcd[REDACTED]");
    }

    #[test]
    fn luhn_check() {
        assert!(luhn("4111 1111 1111 1111"));
        assert!(!luhn("4111 1111 1111 1112"));
    }

    #[test]
    fn credential_keys() {
        let cred = |k: &str, v: &str| credential_value(v) && CREDENTIAL_KEY.is_match(k);
        assert!(cred("api_key", "abcd1234efgh"));
        assert!(cred("db_password", "hunter2hunter2"));
        assert!(cred("clientSecret", "s3cr3t-value"));
        assert!(!cred("next_page", "abcd1234efgh"));
        assert!(!cred("token", "short"));
        assert!(!cred("password", "********"));
        assert!(!cred("token_count", "a long sentence here"));
        assert!(!cred("token_count", "abcd1234efgh"));
    }
}

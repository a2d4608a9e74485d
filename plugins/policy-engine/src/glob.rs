//! Topic globs with the semantics of Go's `path.Match`, compiled once at load.
//!
//! * `*` matches any run of characters except `/` (so `job.*` matches
//!   `job.a.b.c`, but `a/*` does not match `a/b/c`);
//! * `?` matches one character except `/`;
//! * `[...]` is a character class with ranges (`a-z`), negated by a leading
//!   `^` (Go) or `!` (shell habit); `\` escapes the next character.
//!
//! The matcher follows Go's chunk-by-chunk algorithm (a chunk is the text
//! between stars, matched at the leftmost position that works), so edge cases
//! give Go's answers. Unlike Go, a malformed pattern never matches anything,
//! wherever the defect is; an empty (or all-blank) pattern never matches.

/// A compiled pattern. `src` is the trimmed text, kept for explanations.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Glob {
    src: String,
    chunks: Vec<Chunk>,
    valid: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Chunk {
    /// Preceded by one or more stars.
    star: bool,
    items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq)]
enum Item {
    /// A run of literal characters, compared as bytes.
    Lit(String),
    Any,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Glob {
    /// Compile `pattern` (trimmed first). Never fails: a malformed or empty
    /// pattern compiles to one that matches nothing.
    pub(crate) fn new(pattern: &str) -> Self {
        let src = pattern.trim().to_owned();
        let (chunks, valid) = match parse(&src) {
            Some(chunks) if !src.is_empty() => (chunks, true),
            _ => (Vec::new(), false),
        };
        Glob { src, chunks, valid }
    }

    /// The trimmed pattern text.
    pub(crate) fn as_str(&self) -> &str {
        &self.src
    }

    /// False for malformed and empty patterns.
    #[cfg(test)]
    pub(crate) fn is_valid(&self) -> bool {
        self.valid
    }

    /// Whether `name` matches the whole pattern.
    pub(crate) fn matches(&self, name: &str) -> bool {
        if !self.valid {
            return false;
        }
        let mut name = name;
        let last = self.chunks.len().saturating_sub(1);
        'chunks: for (ci, chunk) in self.chunks.iter().enumerate() {
            if chunk.star && chunk.items.is_empty() {
                // Trailing star: matches the rest unless it holds a '/'.
                return !name.contains('/');
            }
            let is_last = ci == last;
            if let Some(rest) = match_chunk(&chunk.items, name)
                && (rest.is_empty() || !is_last)
            {
                name = rest;
                continue;
            }
            if chunk.star {
                // Let the star swallow one more character at a time, never a '/'.
                for (i, c) in name.char_indices() {
                    if c == '/' {
                        break;
                    }
                    if let Some(rest) = match_chunk(&chunk.items, &name[i + c.len_utf8()..]) {
                        if is_last && !rest.is_empty() {
                            continue;
                        }
                        name = rest;
                        continue 'chunks;
                    }
                }
            }
            return false;
        }
        name.is_empty()
    }
}

/// Match one chunk at the start of `s`; the unmatched rest on success.
fn match_chunk<'a>(items: &[Item], s: &'a str) -> Option<&'a str> {
    let mut rest = s;
    for item in items {
        rest = match item {
            Item::Lit(l) => rest.strip_prefix(l.as_str())?,
            Item::Any => {
                let c = rest.chars().next()?;
                if c == '/' {
                    return None;
                }
                &rest[c.len_utf8()..]
            }
            Item::Class { negated, ranges } => {
                let c = rest.chars().next()?;
                if ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) == *negated {
                    return None;
                }
                &rest[c.len_utf8()..]
            }
        };
    }
    Some(rest)
}

/// Split a pattern into chunks; `None` when it is malformed.
fn parse(p: &str) -> Option<Vec<Chunk>> {
    let chars: Vec<char> = p.chars().collect();
    let mut chunks = Vec::new();
    let mut cur = Chunk { star: false, items: Vec::new() };
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => {
                if !cur.items.is_empty() {
                    chunks.push(std::mem::replace(&mut cur, Chunk { star: true, items: Vec::new() }));
                } else {
                    cur.star = true;
                }
                i += 1;
            }
            '?' => {
                cur.items.push(Item::Any);
                i += 1;
            }
            '\\' => {
                push_lit(&mut cur.items, *chars.get(i + 1)?);
                i += 2;
            }
            '[' => {
                let (item, next) = parse_class(&chars, i + 1)?;
                cur.items.push(item);
                i = next;
            }
            c => {
                push_lit(&mut cur.items, c);
                i += 1;
            }
        }
    }
    if cur.star || !cur.items.is_empty() {
        chunks.push(cur);
    }
    Some(chunks)
}

fn push_lit(items: &mut Vec<Item>, c: char) {
    if let Some(Item::Lit(run)) = items.last_mut() {
        run.push(c);
    } else {
        items.push(Item::Lit(c.to_string()));
    }
}

/// Parse a class body starting just after `[`; the item and the index after `]`.
fn parse_class(chars: &[char], mut i: usize) -> Option<(Item, usize)> {
    let mut negated = false;
    if matches!(chars.get(i), Some('^') | Some('!')) {
        negated = true;
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if chars.get(i) == Some(&']') && !ranges.is_empty() {
            return Some((Item::Class { negated, ranges }, i + 1));
        }
        let (lo, next) = class_char(chars, i)?;
        i = next;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            let (h, next) = class_char(chars, i + 1)?;
            hi = h;
            i = next;
        }
        // An inverted range (`z-a`) is kept: like Go's, it matches nothing.
        ranges.push((lo, hi));
    }
}

/// One (possibly escaped) class character. Like Go, an unescaped `-` or `]`
/// here is malformed, and the class must go on after it (it needs its `]`).
fn class_char(chars: &[char], mut i: usize) -> Option<(char, usize)> {
    let mut c = *chars.get(i)?;
    if c == '-' || c == ']' {
        return None;
    }
    if c == '\\' {
        i += 1;
        c = *chars.get(i)?;
    }
    i += 1;
    if i >= chars.len() {
        return None;
    }
    Some((c, i))
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn m(p: &str, s: &str) -> bool {
        Glob::new(p).matches(s)
    }

    #[test]
    fn literal_and_star() {
        assert!(m("job.default", "job.default"));
        assert!(!m("job.default", "job.defaults"));
        assert!(!m("job.default", "job.defaul"));
        assert!(m("job.*", "job.a"));
        assert!(m("job.*", "job.a.b.c"));
        assert!(m("job.*", "job."));
        assert!(!m("job.*", "job"));
        assert!(!m("job.*", "sys.job.a"));
        assert!(m("*", "anything.at.all"));
        assert!(m("*", ""));
        assert!(m("**", "abc"));
        assert!(m("job.*.process", "job.bank.process"));
        assert!(m("job.*.process", "job.a.b.process"));
        assert!(!m("job.*.process", "job.a.b.processx"));
        assert!(m("job.demo-*", "job.demo-x"));
        assert!(m("*a*b", "xxaxxb"));
        assert!(!m("*a*b", "xxaxxbc"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "a.b.b.c"));
    }

    #[test]
    fn star_never_crosses_slash() {
        assert!(!m("job.*", "job.a/b"));
        assert!(m("job/*", "job/a"));
        assert!(!m("job/*", "job/a/b"));
        assert!(m("job/*/x", "job/a/x"));
        assert!(!m("*x", "a/x"));
        assert!(m("*/x", "a/x"));
    }

    #[test]
    fn question_mark() {
        assert!(m("job.?", "job.a"));
        assert!(!m("job.?", "job.ab"));
        assert!(!m("job.?", "job."));
        assert!(!m("a?b", "a/b"));
        assert!(m("job.?", "job.é"));
    }

    #[test]
    fn classes() {
        assert!(m("job.[abc]", "job.b"));
        assert!(!m("job.[abc]", "job.d"));
        assert!(m("job.[a-c]x", "job.bx"));
        assert!(!m("job.[a-c]x", "job.dx"));
        assert!(m("job.[^a-c]", "job.d"));
        assert!(!m("job.[^a-c]", "job.a"));
        assert!(m("job.[!a-c]", "job.z"));
        assert!(!m("job.[!a-c]", "job.b"));
        assert!(m("v[0-9][0-9]", "v42"));
        assert!(m("[a-cx-z]", "y"));
        assert!(m("[\\]]", "]"));
        assert!(m("[\\-]", "-"));
        assert!(m("[*]", "*"));
        assert!(!m("[*]", "a"));
        // Go: a negated class can match '/'.
        assert!(m("a[^x]b", "a/b"));
    }

    #[test]
    fn escapes() {
        assert!(m("job\\*", "job*"));
        assert!(!m("job\\*", "jobx"));
        assert!(m("a\\?", "a?"));
        assert!(m("\\[x]", "[x]"));
    }

    #[test]
    fn malformed_patterns_never_match() {
        for p in
            ["job.[", "job.[a", "job.[]", "job.[^]", "[-a]", "[a-]", "[]a]", "job\\", "[a-\\", "x[", "*[", "[z-a]x["]
        {
            let g = Glob::new(p);
            assert!(!g.is_valid(), "{p:?} should be malformed");
            assert!(!g.matches("job.a"), "{p:?}");
            assert!(!g.matches(""), "{p:?}");
            assert!(!g.matches(p), "{p:?}");
        }
        // A stray ']' outside a class is a literal.
        assert!(m("a]", "a]"));
    }

    #[test]
    fn inverted_range_matches_nothing() {
        let g = Glob::new("[z-a]");
        assert!(g.is_valid());
        assert!(!g.matches("m"));
        assert!(!g.matches("a"));
        assert!(Glob::new("[^z-a]").matches("m"));
    }

    #[test]
    fn trimmed_and_empty() {
        assert!(m("  job.*  ", "job.a"));
        assert_eq!(Glob::new("  job.*  ").as_str(), "job.*");
        assert!(!m("", ""));
        assert!(!m("   ", ""));
        assert!(!m("", "job.a"));
    }

    #[test]
    fn case_sensitive() {
        assert!(!m("job.A", "job.a"));
        assert!(m("JOB.*", "JOB.x"));
    }

    #[test]
    fn go_leftmost_chunk_semantics() {
        // Go commits to the leftmost match of a non-final chunk.
        assert!(!m("*[^x]*", "a/b"));
        assert!(m("*.b", "a.b.b"));
    }
}

//! Kubernetes-style label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
//! `k` (exists), `!k` (absent); a comma means AND.

use std::collections::BTreeMap;
use std::fmt;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

/// A parsed selector: every requirement must hold. The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

/// Why a selector did not parse, with the byte offset where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {}: {message}", .at + 1)]
pub struct SelectorError {
    pub at: usize,
    pub message: String,
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Eq(k, v) => labels.get(k) == Some(v),
            // Kubernetes semantics: `k!=v` also matches nodes without the label.
            Requirement::NotEq(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        }
    }
}

impl Selector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        Parser { s: text.as_bytes(), i: 0 }.selector()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::Eq(k, v) => format!("{k}={v}"),
                Requirement::NotEq(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::Absent(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/')
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err<T>(&self, at: usize, message: impl Into<String>) -> Result<T, SelectorError> {
        Err(SelectorError { at, message: message.into() })
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn word(&mut self, what: &str) -> Result<String, SelectorError> {
        self.ws();
        let start = self.i;
        while self.i < self.s.len() && is_word(self.s[self.i]) {
            self.i += 1;
        }
        if start == self.i {
            let found = match self.peek() {
                Some(c) => format!("'{}'", c as char),
                None => "end of selector".into(),
            };
            return self.err(start, format!("expected {what}, found {found}"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn selector(mut self) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        self.ws();
        if self.i == self.s.len() {
            return self.err(0, "empty selector");
        }
        loop {
            requirements.push(self.requirement()?);
            self.ws();
            match self.peek() {
                None => break,
                Some(b',') => self.i += 1,
                Some(c) => {
                    return self.err(self.i, format!("expected ',' or end, found '{}'", c as char));
                }
            }
        }
        Ok(Selector { requirements })
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        self.ws();
        if self.peek() == Some(b'!') {
            self.i += 1;
            return Ok(Requirement::Absent(self.word("a label key after '!'")?));
        }
        let key = self.word("a label key")?;
        self.ws();
        let rest = &self.s[self.i..];
        if rest.starts_with(b"!=") {
            self.i += 2;
            return Ok(Requirement::NotEq(key, self.word("a value after '!='")?));
        }
        if rest.starts_with(b"==") {
            self.i += 2;
            return Ok(Requirement::Eq(key, self.word("a value after '=='")?));
        }
        if rest.starts_with(b"=") {
            self.i += 1;
            return Ok(Requirement::Eq(key, self.word("a value after '='")?));
        }
        let at = self.i;
        if rest.first().is_some_and(|c| is_word(*c)) {
            let op = self.word("an operator")?;
            return match op.as_str() {
                "in" => Ok(Requirement::In(key, self.set()?)),
                "notin" => Ok(Requirement::NotIn(key, self.set()?)),
                other => self.err(at, format!("unknown operator \"{other}\" (expected =, !=, in, notin)")),
            };
        }
        Ok(Requirement::Exists(key))
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.ws();
        if self.peek() != Some(b'(') {
            return self.err(self.i, "expected '(' to open a value list");
        }
        self.i += 1;
        let mut values = vec![self.word("a value")?];
        loop {
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    values.push(self.word("a value")?);
                }
                Some(b')') => {
                    self.i += 1;
                    return Ok(values);
                }
                _ => return self.err(self.i, "expected ',' or ')' in a value list"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_every_form() {
        let s = Selector::parse("role=web,env in (prod, staging),!canary,zone,tier!=db,x notin (a)").unwrap();
        assert_eq!(s.requirements.len(), 6);
        assert_eq!(s.to_string(), "role=web,env in (prod,staging),!canary,zone,tier!=db,x notin (a)");
    }

    #[test]
    fn matches_like_kubernetes() {
        let s = Selector::parse("role=web,env in (prod,staging),!canary").unwrap();
        assert!(s.matches(&labels(&[("role", "web"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("role", "web"), ("env", "dev")])));
        assert!(!s.matches(&labels(&[("role", "web"), ("env", "prod"), ("canary", "")])));
        let ne = Selector::parse("tier!=db").unwrap();
        assert!(ne.matches(&labels(&[])));
        assert!(!ne.matches(&labels(&[("tier", "db")])));
    }

    #[test]
    fn errors_say_where_and_why() {
        let e = Selector::parse("role=").unwrap_err();
        assert_eq!(e.to_string(), "at column 6: expected a value after '=', found end of selector");
        let e = Selector::parse("env in prod").unwrap_err();
        assert!(e.message.contains("expected '('"), "{e}");
        let e = Selector::parse("env within (a)").unwrap_err();
        assert!(e.message.contains("unknown operator \"within\""), "{e}");
        assert!(Selector::parse("").is_err());
        assert!(Selector::parse("a=b,,c").is_err());
        assert!(Selector::parse("a=b c").is_err());
    }
}

//! The CEL subset of Dapr routing rules (`event.type == "widget.v2"`): `==` and `!=` between
//! a path under `event` and a string literal, `.startsWith()`, `.endsWith()`, `.contains()`
//! with a string literal, `&&`, `||`, `!` and parentheses. Anything else is refused when the
//! rule is loaded, with the position of the problem.

use serde_json::Value;

/// A parsed rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Eq(Vec<String>, String),
    Ne(Vec<String>, String),
    Call(Vec<String>, Method, String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Dot,
    LParen,
    RParen,
    Not,
    And,
    Or,
    EqEq,
    NotEq,
}

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, String> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        let at = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'.' => {
                out.push((at, Tok::Dot));
                i += 1;
            }
            b'(' => {
                out.push((at, Tok::LParen));
                i += 1;
            }
            b')' => {
                out.push((at, Tok::RParen));
                i += 1;
            }
            b'&' if b.get(i + 1) == Some(&b'&') => {
                out.push((at, Tok::And));
                i += 2;
            }
            b'|' if b.get(i + 1) == Some(&b'|') => {
                out.push((at, Tok::Or));
                i += 2;
            }
            b'=' if b.get(i + 1) == Some(&b'=') => {
                out.push((at, Tok::EqEq));
                i += 2;
            }
            b'!' if b.get(i + 1) == Some(&b'=') => {
                out.push((at, Tok::NotEq));
                i += 2;
            }
            b'!' => {
                out.push((at, Tok::Not));
                i += 1;
            }
            b'"' | b'\'' => {
                let quote = c;
                let mut s = String::new();
                i += 1;
                loop {
                    let Some(&ch) = b.get(i) else {
                        return Err(format!("unterminated string starting at {at}"));
                    };
                    if ch == quote {
                        i += 1;
                        break;
                    }
                    if ch == b'\\' {
                        match b.get(i + 1) {
                            Some(&e @ (b'"' | b'\'' | b'\\')) => s.push(char::from(e)),
                            Some(b'n') => s.push('\n'),
                            Some(b't') => s.push('\t'),
                            _ => return Err(format!("unsupported escape at {i}")),
                        }
                        i += 2;
                        continue;
                    }
                    // Multi-byte UTF-8 is copied whole.
                    let len = src[i..].chars().next().map_or(1, char::len_utf8);
                    s.push_str(&src[i..i + len]);
                    i += len;
                }
                out.push((at, Tok::Str(s)));
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push((at, Tok::Ident(src[at..i].to_owned())));
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(format!(
                    "{ch:?} at {at} is outside the supported CEL subset (==, !=, &&, ||, !, parentheses, startsWith/endsWith/contains, string literals)"
                ));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    len: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn at(&self) -> usize {
        self.toks.get(self.pos).map_or(self.len, |(a, _)| *a)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|(_, t)| t.clone());
        self.pos += 1;
        t
    }

    fn expect(&mut self, want: &Tok, what: &str) -> Result<(), String> {
        let at = self.at();
        match self.next() {
            Some(t) if &t == want => Ok(()),
            _ => Err(format!("expected {what} at {at}")),
        }
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        match self.peek() {
            Some(Tok::Not) => {
                self.pos += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                let e = self.or()?;
                self.expect(&Tok::RParen, "`)`")?;
                Ok(e)
            }
            Some(Tok::Str(_)) => {
                // "literal" == event.path
                let Some(Tok::Str(lit)) = self.next() else {
                    unreachable!("peeked a string")
                };
                let at = self.at();
                let op = self.next();
                let path = self.path()?;
                match op {
                    Some(Tok::EqEq) => Ok(Expr::Eq(path, lit)),
                    Some(Tok::NotEq) => Ok(Expr::Ne(path, lit)),
                    _ => Err(format!("expected == or != at {at}")),
                }
            }
            _ => self.comparison(),
        }
    }

    /// `event.a.b`, stopping before a method name.
    fn path(&mut self) -> Result<Vec<String>, String> {
        let at = self.at();
        match self.next() {
            Some(Tok::Ident(id)) if id == "event" => {}
            _ => return Err(format!("expected a path starting with `event` at {at}")),
        }
        let mut path = Vec::new();
        while self.peek() == Some(&Tok::Dot) {
            let is_method = matches!(
                self.toks.get(self.pos + 1),
                Some((_, Tok::Ident(m))) if matches!(m.as_str(), "startsWith" | "endsWith" | "contains")
            ) && matches!(self.toks.get(self.pos + 2), Some((_, Tok::LParen)));
            if is_method {
                break;
            }
            self.pos += 1;
            let at = self.at();
            match self.next() {
                Some(Tok::Ident(id)) => path.push(id),
                _ => return Err(format!("expected a field name at {at}")),
            }
        }
        if path.is_empty() {
            return Err(format!(
                "`event` alone at {at} is not a value; name a field (event.type)"
            ));
        }
        Ok(path)
    }

    fn comparison(&mut self) -> Result<Expr, String> {
        let path = self.path()?;
        let at = self.at();
        match self.next() {
            Some(Tok::EqEq) => Ok(Expr::Eq(path, self.string()?)),
            Some(Tok::NotEq) => Ok(Expr::Ne(path, self.string()?)),
            Some(Tok::Dot) => {
                let at = self.at();
                let method = match self.next() {
                    Some(Tok::Ident(m)) if m == "startsWith" => Method::StartsWith,
                    Some(Tok::Ident(m)) if m == "endsWith" => Method::EndsWith,
                    Some(Tok::Ident(m)) if m == "contains" => Method::Contains,
                    _ => return Err(format!("expected startsWith, endsWith or contains at {at}")),
                };
                self.expect(&Tok::LParen, "`(`")?;
                let arg = self.string()?;
                self.expect(&Tok::RParen, "`)`")?;
                Ok(Expr::Call(path, method, arg))
            }
            Some(Tok::LParen) => Err(format!(
                "`{}` before {at} is not a supported method; use startsWith, endsWith or contains",
                path.last().map_or("", String::as_str)
            )),
            _ => Err(format!("expected ==, != or a method call at {at}")),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let at = self.at();
        match self.next() {
            Some(Tok::Str(s)) => Ok(s),
            _ => Err(format!("expected a string literal at {at}")),
        }
    }
}

/// Parses a rule; the error says what and where (a byte offset).
pub fn parse(src: &str) -> Result<Expr, String> {
    let toks = lex(src)?;
    if toks.is_empty() {
        return Err("the rule is empty".to_owned());
    }
    let mut p = Parser {
        toks,
        pos: 0,
        len: src.len(),
    };
    let e = p.or()?;
    if p.pos < p.toks.len() {
        return Err(format!("unexpected input at {}", p.at()));
    }
    Ok(e)
}

fn lookup<'v>(event: &'v Value, path: &[String]) -> Option<&'v str> {
    path.iter()
        .try_fold(event, |v, k| v.get(k))
        .and_then(Value::as_str)
}

/// Whether `event` (the CloudEvent as JSON) matches.
pub fn matches(e: &Expr, event: &Value) -> bool {
    match e {
        Expr::Eq(p, lit) => lookup(event, p) == Some(lit.as_str()),
        Expr::Ne(p, lit) => lookup(event, p) != Some(lit.as_str()),
        Expr::Call(p, m, arg) => lookup(event, p).is_some_and(|v| match m {
            Method::StartsWith => v.starts_with(arg.as_str()),
            Method::EndsWith => v.ends_with(arg.as_str()),
            Method::Contains => v.contains(arg.as_str()),
        }),
        Expr::Not(x) => !matches(x, event),
        Expr::And(a, b) => matches(a, event) && matches(b, event),
        Expr::Or(a, b) => matches(a, event) || matches(b, event),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_subset_parses_and_matches() {
        let ev = json!({"type": "widget.v2", "source": "shop/eu", "data": {"kind": "big"}});
        let yes = [
            r#"event.type == "widget.v2""#,
            r#"event.type != 'widget.v1'"#,
            r#""widget.v2" == event.type"#,
            r#"event.source.startsWith("shop/") && event.data.kind == "big""#,
            r#"!(event.type.endsWith(".v1")) || event.data.kind.contains("x")"#,
            r#"event.subject != "a""#,
        ];
        for r in yes {
            assert!(
                matches(&parse(r).unwrap_or_else(|e| panic!("{r}: {e}")), &ev),
                "{r}"
            );
        }
        let no = [
            r#"event.type == "widget.v1""#,
            r#"event.subject == "a""#,
            r#"event.data.kind.startsWith("s") && event.type == "widget.v2""#,
        ];
        for r in no {
            assert!(!matches(&parse(r).expect("parses"), &ev), "{r}");
        }
    }

    #[test]
    fn anything_else_is_refused_with_a_position() {
        for (rule, says) in [
            ("event.data.count > 3", "'>' at 17"),
            (
                "size(event.data) == \"1\"",
                "expected a path starting with `event` at 0",
            ),
            ("event.type == 1", "'1' at 14"),
            (
                "event.type.matches('x')",
                "`matches` before 18 is not a supported method",
            ),
            ("event == \"x\"", "`event` alone"),
            ("event.type == \"x", "unterminated string"),
            ("", "empty"),
            ("(event.type == \"x\"", "expected `)`"),
        ] {
            let err = parse(rule).expect_err(rule);
            assert!(err.contains(says), "{rule}: {err}");
        }
    }
}

//! Relay-action expressions for the server: the user writes them in SI units with the names of
//! the Pi's own triggers (`L1U > 253`); the firmware evaluates scaled integers (`L1U > 2530`)
//! with zserge/expr's grammar. This module parses the user's text, refuses what the firmware
//! cannot run (saying why), rescales the constants, writes the firmware's text, and checks it
//! by parsing it back with the firmware's own precedence rules. Pure.
//!
//! The firmware's grammar (pmtr-server.md §9.2), tightest first: unary `- ! ^`; `** * / %`;
//! `+ -`; `<< >>`; all six comparisons on one level; `&`; `|`; `^`; `&&`; `||`; `=`; `,`.
//! Unknown names are not errors there (they are new variables worth 0), and a syntax error
//! leaves the result undefined (unpredictable trips), which is why nothing reaches a server
//! without passing here.

use std::fmt;

/// The longest text the firmware keeps: 64 bytes with the NUL.
pub const MAX_TEXT: usize = 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Pow,
    Mul,
    Div,
    Mod,
    Add,
    Sub,
    Shl,
    Shr,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    BitAnd,
    BitOr,
    BitXor,
    And,
    Or,
    Assign,
    Comma,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Pow => "**",
            Op::Mul => "*",
            Op::Div => "/",
            Op::Mod => "%",
            Op::Add => "+",
            Op::Sub => "-",
            Op::Shl => "<<",
            Op::Shr => ">>",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::BitAnd => "&",
            Op::BitOr => "|",
            Op::BitXor => "^",
            Op::And => "&&",
            Op::Or => "||",
            Op::Assign => "=",
            Op::Comma => ",",
        }
    }

    /// The firmware's binding level: 2 is tightest for binary operators (unary is 1).
    fn level(self) -> u8 {
        match self {
            Op::Pow | Op::Mul | Op::Div | Op::Mod => 2,
            Op::Add | Op::Sub => 3,
            Op::Shl | Op::Shr => 4,
            Op::Lt | Op::Le | Op::Gt | Op::Ge | Op::Eq | Op::Ne => 5,
            Op::BitAnd => 6,
            Op::BitOr => 7,
            Op::BitXor => 8,
            Op::And => 9,
            Op::Or => 10,
            Op::Assign => 11,
            Op::Comma => 12,
        }
    }

    fn right_assoc(self) -> bool {
        matches!(self, Op::Pow | Op::Assign)
    }

    fn is_comparison(self) -> bool {
        self.level() == 5
    }
}

/// An expression tree (the user's, rescaled, or the firmware's reading of a text).
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Num(f64),
    Var(String),
    Neg(Box<Node>),
    Not(Box<Node>),
    Bin(Op, Box<Node>, Box<Node>),
}

impl Node {
    fn bin(op: Op, a: Node, b: Node) -> Node {
        Node::Bin(op, Box::new(a), Box::new(b))
    }

    fn level(&self) -> u8 {
        match self {
            Node::Num(_) | Node::Var(_) => 0,
            Node::Neg(_) | Node::Not(_) => 1,
            Node::Bin(op, ..) => op.level(),
        }
    }

    fn is_condition(&self) -> bool {
        match self {
            Node::Not(_) => true,
            Node::Bin(op, ..) => op.is_comparison() || matches!(op, Op::And | Op::Or),
            _ => false,
        }
    }
}

/// Why an expression cannot run on the server. `offset` is the byte offset in the user's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub offset: Option<usize>,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExprError {}

fn err(offset: usize, message: impl Into<String>) -> ExprError {
    ExprError { offset: Some(offset), message: message.into() }
}

// ---------------------------------------------------------------- tokens

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Name(String),
    Op(&'static str),
    Open,
    Close,
}

const OPERATORS: [&str; 24] = [
    "**", "<<", ">>", "<=", ">=", "==", "!=", "&&", "||", "+", "-", "*", "/", "%", "<", ">", "!", "&", "|",
    "^", "=", ",", ";", "~",
];

fn tokens(text: &str) -> Result<Vec<(usize, Tok)>, ExprError> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
            let word = &text[start..i];
            if c == b'.' || word.contains(['e', 'E']) || word.matches('.').count() > 1 {
                return Err(err(start, format!("`{word}`: write numbers as plain decimals (`0.5`, `1000`)")));
            }
            let v: f64 = word.parse().map_err(|_| err(start, format!("`{word}` is not a number")))?;
            out.push((start, Tok::Num(v)));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            out.push((start, Tok::Name(text[start..i].to_string())));
        } else if c == b'(' {
            out.push((i, Tok::Open));
            i += 1;
        } else if c == b')' {
            out.push((i, Tok::Close));
            i += 1;
        } else if let Some(op) = OPERATORS.iter().find(|op| text[i..].starts_with(**op)) {
            out.push((i, Tok::Op(op)));
            i += op.len();
        } else {
            let ch = text[i..].chars().next().unwrap_or('?');
            return Err(err(i, format!("unexpected `{ch}`")));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- the user's grammar

/// The user's grammar: the part of the Pi's trigger language that the firmware also runs.
struct UserParser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
}

impl UserParser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn offset(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(o, _)| *o)
    }

    fn eat_op(&mut self, ops: &[&str]) -> Option<(usize, &'static str)> {
        match self.toks.get(self.pos) {
            Some((o, Tok::Op(op))) if ops.contains(op) => {
                let r = (*o, *op);
                self.pos += 1;
                Some(r)
            }
            _ => None,
        }
    }

    fn or(&mut self) -> Result<Node, ExprError> {
        let mut a = self.and()?;
        while self.eat_op(&["||"]).is_some() {
            a = Node::bin(Op::Or, a, self.and()?);
        }
        Ok(a)
    }

    fn and(&mut self) -> Result<Node, ExprError> {
        let mut a = self.cmp()?;
        while self.eat_op(&["&&"]).is_some() {
            a = Node::bin(Op::And, a, self.cmp()?);
        }
        Ok(a)
    }

    fn cmp(&mut self) -> Result<Node, ExprError> {
        let a = self.add()?;
        let Some((_, op)) = self.eat_op(&["<", "<=", ">", ">=", "==", "!="]) else { return Ok(a) };
        let op = match op {
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "==" => Op::Eq,
            _ => Op::Ne,
        };
        let b = self.add()?;
        if let Some((o, _)) = self.eat_op(&["<", "<=", ">", ">=", "==", "!="]) {
            return Err(err(o, "comparisons do not chain: write `a < b && b < c`"));
        }
        Ok(Node::bin(op, a, b))
    }

    fn add(&mut self) -> Result<Node, ExprError> {
        let mut a = self.mul()?;
        while let Some((_, op)) = self.eat_op(&["+", "-"]) {
            let b = self.mul()?;
            a = Node::bin(if op == "+" { Op::Add } else { Op::Sub }, a, b);
        }
        Ok(a)
    }

    fn mul(&mut self) -> Result<Node, ExprError> {
        let mut a = self.unary()?;
        while let Some((_, op)) = self.eat_op(&["*", "/", "%"]) {
            let b = self.unary()?;
            let op = match op {
                "*" => Op::Mul,
                "/" => Op::Div,
                _ => Op::Mod,
            };
            a = Node::bin(op, a, b);
        }
        Ok(a)
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        if self.eat_op(&["-"]).is_some() {
            return Ok(Node::Neg(Box::new(self.unary()?)));
        }
        if self.eat_op(&["!"]).is_some() {
            return Ok(Node::Not(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        let offset = self.offset();
        let Some((_, tok)) = self.toks.get(self.pos).cloned() else {
            return Err(err(offset, "the expression ends too soon"));
        };
        self.pos += 1;
        match tok {
            Tok::Num(v) => Ok(Node::Num(v)),
            Tok::Name(n) if n == "true" => Ok(Node::Num(1.0)),
            Tok::Name(n) if n == "false" => Ok(Node::Num(0.0)),
            Tok::Name(n) => {
                if self.peek() == Some(&Tok::Open) {
                    return Err(err(offset, format!("`{n}(…)`: the server's expressions have no functions")));
                }
                Ok(Node::Var(n))
            }
            Tok::Open => {
                let e = self.or()?;
                match self.toks.get(self.pos) {
                    Some((_, Tok::Close)) => {
                        self.pos += 1;
                        Ok(e)
                    }
                    _ => Err(err(self.offset(), "a `(` is not closed")),
                }
            }
            Tok::Close => Err(err(offset, "unexpected `)`")),
            Tok::Op(op) => Err(err(offset, unsupported_operator(op))),
        }
    }
}

fn unsupported_operator(op: &str) -> String {
    match op {
        "^" => "`^` means a power on the Pi and exclusive or on the server: write `x * x`".into(),
        "**" => "`**` is not in the Pi's trigger language: write `x * x`".into(),
        "&" | "|" => format!("`{op}` is bitwise on the server: write `{op}{op}`"),
        "=" => "`=` assigns on the server: write `==` to compare".into(),
        "," | ";" => format!("`{op}`: write one condition (join conditions with `&&` or `||`)"),
        _ => format!("`{op}` is not allowed here"),
    }
}

/// Parses the user's expression.
pub fn parse_user(text: &str) -> Result<Node, ExprError> {
    let toks = tokens(text)?;
    if toks.is_empty() {
        return Err(ExprError { offset: None, message: "the expression is empty".into() });
    }
    let mut p = UserParser { toks, pos: 0, end: text.len() };
    let node = p.or()?;
    if let Some((o, t)) = p.toks.get(p.pos) {
        let what = match t {
            Tok::Op(op) => unsupported_operator(op),
            Tok::Close => "unexpected `)`".into(),
            _ => "an operator is missing here".into(),
        };
        return Err(err(*o, what));
    }
    Ok(node)
}

// ---------------------------------------------------------------- variables and units

/// How the server's values relate to SI: the value the firmware compares is `SI × factor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Units {
    /// False for the legacy float firmware, whose variables are in SI already.
    pub scaled: bool,
    /// The meter's multiplier for power and energy (its readings are the server's × this).
    pub multiplier: f64,
}

impl Units {
    pub fn current(multiplier: f64) -> Self {
        Units { scaled: true, multiplier }
    }

    /// The factor from SI to the firmware's value of variable `name`, or why the server has no
    /// such variable.
    pub fn factor(&self, name: &str) -> Result<f64, String> {
        let quantity = name
            .strip_prefix("L1")
            .or_else(|| name.strip_prefix("L2"))
            .or_else(|| name.strip_prefix("L3"))
            .unwrap_or("");
        let scale = |f: f64| if self.scaled { f } else { 1.0 };
        let f = match quantity {
            "U" => scale(10.0),
            "I" => scale(100.0),
            "P" => 1.0 / self.multiplier,
            "e" => scale(10.0) / self.multiplier,
            "f" => scale(10.0),
            "pf" => scale(100.0),
            _ => return Err(unknown_variable(name)),
        };
        Ok(f)
    }
}

fn unknown_variable(name: &str) -> String {
    let plain = name.rsplit('.').next().unwrap_or(name);
    if name.contains('.') {
        return format!(
            "`{name}`: an action runs on its server and sees only that server's meters: write `{plain}`"
        );
    }
    if let Some(base) = plain.strip_suffix("avg") {
        return format!(
            "`{name}`: the server's variables are already its moving averages (`average`): write `{base}`"
        );
    }
    match plain {
        "hour" | "minute" | "weekday" | "day" | "month" => {
            format!("`{name}`: the server's expressions have no clock; use a trigger on the Pi for that")
        }
        "P" | "S" | "Q" | "e" | "es" | "eq" | "f" | "pf" => format!(
            "`{name}`: the server has no totals, only per-phase values (`L1P + L2P + L3P`)"
        ),
        "V5" | "V12" | "lowpower" => format!("`{name}`: the server's supply voltages are not in its expressions"),
        _ if plain.starts_with("L12") || plain.starts_with("L23") || plain.starts_with("L31") => {
            format!("`{name}`: the server measures phase-to-neutral only")
        }
        _ if plain.ends_with("alarm") => format!("`{name}`: the server does not read its PZEMs' alarms"),
        _ => format!(
            "`{name}` is not a variable of the server: L1U L1I L1P L1e L1f L1pf (and L2…, L3…), in V, A, W, kWh, Hz"
        ),
    }
}

fn check_variables(node: &Node, units: &Units, text: &str) -> Result<(), ExprError> {
    match node {
        Node::Var(name) => units.factor(name).map(|_| ()).map_err(|m| {
            let offset = find_word(text, name);
            ExprError { offset, message: m }
        }),
        Node::Num(_) => Ok(()),
        Node::Neg(a) | Node::Not(a) => check_variables(a, units, text),
        Node::Bin(_, a, b) => {
            check_variables(a, units, text)?;
            check_variables(b, units, text)
        }
    }
}

fn find_word(text: &str, word: &str) -> Option<usize> {
    text.match_indices(word).find_map(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.');
        (!is_word(before) && !is_word(after)).then_some(i)
    })
}

// ---------------------------------------------------------------- rescaling

/// The common factor of every variable under `node`, if they share one (None: no variable).
fn common_factor(node: &Node, units: &Units) -> Result<Option<f64>, ()> {
    match node {
        Node::Num(_) => Ok(None),
        Node::Var(n) => Ok(Some(units.factor(n).map_err(|_| ())?)),
        Node::Neg(a) => common_factor(a, units),
        Node::Not(_) => Err(()),
        Node::Bin(_, a, b) => match (common_factor(a, units)?, common_factor(b, units)?) {
            (Some(x), Some(y)) if (x - y).abs() > 1e-12 * x.abs().max(y.abs()) => Err(()),
            (x, y) => Ok(x.or(y)),
        },
    }
}

/// `node × k` with variables already in the firmware's units, when `node` is linear in them
/// (sums, differences and multiples of variables and numbers). None otherwise.
fn scaled(node: &Node, k: f64) -> Option<Node> {
    Some(match node {
        Node::Num(v) => Node::Num(v * k),
        Node::Var(n) => Node::Var(n.clone()),
        Node::Neg(a) => Node::Neg(Box::new(scaled(a, k)?)),
        Node::Bin(op @ (Op::Add | Op::Sub), a, b) => Node::bin(*op, scaled(a, k)?, scaled(b, k)?),
        Node::Bin(Op::Mul, a, b) => match (has_var(a), has_var(b)) {
            (false, false) => Node::Num(eval_const(node)? * k),
            (true, false) => Node::bin(Op::Mul, scaled(a, k)?, (**b).clone()),
            (false, true) => Node::bin(Op::Mul, (**a).clone(), scaled(b, k)?),
            (true, true) => return None,
        },
        Node::Bin(Op::Div, a, b) => match &**b {
            Node::Num(c) if *c != 0.0 => Node::bin(Op::Div, scaled(a, k)?, Node::Num(*c)),
            _ => return None,
        },
        _ => return None,
    })
}

fn has_var(node: &Node) -> bool {
    match node {
        Node::Var(_) => true,
        Node::Num(_) => false,
        Node::Neg(a) | Node::Not(a) => has_var(a),
        Node::Bin(_, a, b) => has_var(a) || has_var(b),
    }
}

fn eval_const(node: &Node) -> Option<f64> {
    match node {
        Node::Num(v) => Some(*v),
        Node::Neg(a) => Some(-eval_const(a)?),
        Node::Bin(Op::Mul, a, b) => Some(eval_const(a)? * eval_const(b)?),
        _ => None,
    }
}

/// Every variable replaced by its SI value, `raw / factor`: exact, but longer.
fn divided(node: &Node, units: &Units) -> Node {
    match node {
        Node::Var(n) => {
            let f = units.factor(n).unwrap_or(1.0);
            if (f - 1.0).abs() < 1e-12 {
                node.clone()
            } else if f > 1.0 && (f - f.round()).abs() < 1e-9 {
                Node::bin(Op::Div, node.clone(), Node::Num(f))
            } else {
                Node::bin(Op::Mul, node.clone(), Node::Num(1.0 / f))
            }
        }
        Node::Num(_) => node.clone(),
        Node::Neg(a) => Node::Neg(Box::new(divided(a, units))),
        Node::Not(a) => Node::Not(Box::new(divided(a, units))),
        Node::Bin(op, a, b) => Node::bin(*op, divided(a, units), divided(b, units)),
    }
}

/// The expression in the firmware's units: each comparison whose variables share a unit
/// has its numbers rescaled (`L1U > 253` → `L1U > 2530`); any other is rewritten with each
/// variable divided back to SI.
fn rescale(node: &Node, units: &Units) -> Node {
    match node {
        Node::Bin(op, a, b) if op.is_comparison() => {
            if let Ok(Some(k)) = common_factor(node, units) {
                if let (Some(a), Some(b)) = (scaled(a, k), scaled(b, k)) {
                    return Node::bin(*op, a, b);
                }
            }
            divided(node, units)
        }
        Node::Bin(op @ (Op::And | Op::Or), a, b) => Node::bin(*op, rescale(a, units), rescale(b, units)),
        Node::Not(a) => Node::Not(Box::new(rescale(a, units))),
        _ => divided(node, units),
    }
}

/// Numbers as the firmware reads them: plain decimals, at most four places (the firmware's
/// values are whole numbers of its units), no exponent, no sign (a negative is a unary minus).
fn rounded(node: Node) -> Node {
    match node {
        Node::Num(v) if v < 0.0 => Node::Neg(Box::new(Node::Num(round4(-v)))),
        Node::Num(v) => Node::Num(round4(v)),
        Node::Var(_) => node,
        Node::Neg(a) => Node::Neg(Box::new(rounded(*a))),
        Node::Not(a) => Node::Not(Box::new(rounded(*a))),
        Node::Bin(op, a, b) => Node::bin(op, rounded(*a), rounded(*b)),
    }
}

fn round4(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

fn number_text(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

// ---------------------------------------------------------------- writing and reading back

/// The firmware's text of `node`, with the parentheses its precedence needs and no others.
pub fn to_text(node: &Node) -> String {
    let mut out = String::new();
    write_node(node, &mut out);
    out
}

fn write_node(node: &Node, out: &mut String) {
    let child = |c: &Node, parens: bool, out: &mut String| {
        if parens {
            out.push('(');
        }
        write_node(c, out);
        if parens {
            out.push(')');
        }
    };
    match node {
        Node::Num(v) => out.push_str(&number_text(*v)),
        Node::Var(n) => out.push_str(n),
        Node::Neg(a) | Node::Not(a) => {
            out.push(if matches!(node, Node::Neg(_)) { '-' } else { '!' });
            child(a, a.level() > 1, out);
        }
        Node::Bin(op, a, b) => {
            let l = op.level();
            let (left_parens, right_parens) = if op.right_assoc() {
                (a.level() >= l, b.level() > l)
            } else {
                (a.level() > l, b.level() >= l)
            };
            child(a, left_parens, out);
            let spaced = l >= 5;
            if spaced {
                out.push(' ');
            }
            out.push_str(op.text());
            if spaced {
                out.push(' ');
            }
            child(b, right_parens, out);
        }
    }
}

/// Reads `text` as the firmware does (zserge/expr's precedence; numbers must start with a
/// digit). Used to prove that what pmtr sends means what the user wrote.
pub fn parse_firmware(text: &str) -> Result<Node, ExprError> {
    let toks = tokens(text)?;
    let mut p = FirmwareParser { toks, pos: 0 };
    let n = p.binary(12)?;
    if p.pos != p.toks.len() {
        return Err(err(p.toks[p.pos].0, "unexpected text after the expression"));
    }
    Ok(n)
}

struct FirmwareParser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
}

fn binary_op(s: &str) -> Option<Op> {
    Some(match s {
        "**" => Op::Pow,
        "*" => Op::Mul,
        "/" => Op::Div,
        "%" => Op::Mod,
        "+" => Op::Add,
        "-" => Op::Sub,
        "<<" => Op::Shl,
        ">>" => Op::Shr,
        "<" => Op::Lt,
        "<=" => Op::Le,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        "==" => Op::Eq,
        "!=" => Op::Ne,
        "&" => Op::BitAnd,
        "|" => Op::BitOr,
        "^" => Op::BitXor,
        "&&" => Op::And,
        "||" => Op::Or,
        "=" => Op::Assign,
        "," => Op::Comma,
        _ => return None,
    })
}

impl FirmwareParser {
    fn binary(&mut self, level: u8) -> Result<Node, ExprError> {
        if level == 1 {
            return self.unary();
        }
        let mut a = self.binary(level - 1)?;
        loop {
            let Some((_, Tok::Op(s))) = self.toks.get(self.pos) else { return Ok(a) };
            let Some(op) = binary_op(s).filter(|op| op.level() == level) else { return Ok(a) };
            self.pos += 1;
            if op.right_assoc() {
                let b = self.binary(level)?;
                return Ok(Node::bin(op, a, b));
            }
            let b = self.binary(level - 1)?;
            a = Node::bin(op, a, b);
        }
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        let Some((o, tok)) = self.toks.get(self.pos).cloned() else {
            return Err(ExprError { offset: None, message: "the expression ends too soon".into() });
        };
        self.pos += 1;
        match tok {
            Tok::Op("-") => Ok(Node::Neg(Box::new(self.unary()?))),
            Tok::Op("!") => Ok(Node::Not(Box::new(self.unary()?))),
            Tok::Num(v) => Ok(Node::Num(v)),
            Tok::Name(n) => {
                if matches!(self.toks.get(self.pos), Some((_, Tok::Open))) {
                    return Err(err(o, "a function call (the firmware has none: undefined behaviour)"));
                }
                Ok(Node::Var(n))
            }
            Tok::Open => {
                let n = self.binary(12)?;
                match self.toks.get(self.pos) {
                    Some((_, Tok::Close)) => {
                        self.pos += 1;
                        Ok(n)
                    }
                    _ => Err(err(o, "unbalanced parenthesis")),
                }
            }
            _ => Err(err(o, "unexpected token")),
        }
    }
}

// ---------------------------------------------------------------- the whole conversion

/// The firmware's text of the user's SI expression, or exactly why the server cannot run it.
pub fn convert(text: &str, units: &Units) -> Result<String, ExprError> {
    let user = parse_user(text)?;
    check_variables(&user, units, text)?;
    if !user.is_condition() {
        return Err(ExprError {
            offset: Some(0),
            message: "not a condition: compare a value with a number (`L1U > 253`)".into(),
        });
    }
    let firmware = rounded(rescale(&user, units));
    let out = to_text(&firmware);
    if out.len() > MAX_TEXT {
        return Err(ExprError {
            offset: None,
            message: format!(
                "`{out}` is {} characters in the server's units; the server keeps {MAX_TEXT}: shorten it, \
                 or split it into two actions (a server has five)",
                out.len()
            ),
        });
    }
    match parse_firmware(&out) {
        Ok(back) if back == firmware => Ok(out),
        _ => Err(ExprError {
            offset: None,
            message: format!(
                "internal error: `{out}` would not mean the same to the server; please report it"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn conv(text: &str) -> Result<String, String> {
        convert(text, &Units::current(1.0)).map_err(|e| e.message)
    }

    #[test]
    fn thresholds_are_rescaled_to_the_firmware_units() {
        assert_eq!(conv("L1U > 253").unwrap(), "L1U > 2530");
        assert_eq!(conv("L1U > 253.0").unwrap(), "L1U > 2530");
        assert_eq!(conv("L2I >= 16").unwrap(), "L2I >= 1600");
        assert_eq!(conv("L1P > 1200").unwrap(), "L1P > 1200");
        assert_eq!(conv("L3e > 100.5").unwrap(), "L3e > 1005");
        assert_eq!(conv("L1f < 49.5").unwrap(), "L1f < 495");
        assert_eq!(conv("L1pf < 0.8").unwrap(), "L1pf < 80");
        assert_eq!(conv("253 < L1U").unwrap(), "2530 < L1U");
    }

    #[test]
    fn conditions_combine() {
        assert_eq!(
            conv("L1U > 253 || L2U > 253 || L3U > 253").unwrap(),
            "L1U > 2530 || L2U > 2530 || L3U > 2530"
        );
        assert_eq!(
            conv("(L1I > 16 && L1pf < 0.5) || !(L1U > 200)").unwrap(),
            "L1I > 1600 && L1pf < 50 || !(L1U > 2000)"
        );
        assert_eq!(conv("L1U - L2U > 10").unwrap(), "L1U-L2U > 100");
        assert_eq!(conv("L1P + L2P + L3P > 12000").unwrap(), "L1P+L2P+L3P > 12000");
        assert_eq!(conv("(L1U + L2U + L3U) / 3 > 240").unwrap(), "(L1U+L2U+L3U)/3 > 2400");
        assert_eq!(conv("L1U > -1").unwrap(), "L1U > -10");
        assert_eq!(conv("true && L1U > 1").unwrap(), "1 && L1U > 10");
    }

    #[test]
    fn mixed_units_divide_each_variable_back() {
        // Power in W against current in A × 230: exact either way.
        assert_eq!(conv("L1P > L1I * 230").unwrap(), "L1P > L1I/100*230");
    }

    #[test]
    fn the_multiplier_is_folded_into_power_and_energy_thresholds() {
        let u = Units::current(3f64.sqrt());
        assert_eq!(convert("L1P > 12000", &u).unwrap(), "L1P > 6928.2032");
        assert_eq!(convert("L1e > 100", &u).unwrap(), "L1e > 577.3503");
        assert_eq!(convert("L1U > 253", &u).unwrap(), "L1U > 2530");
    }

    #[test]
    fn legacy_firmware_compares_si_values() {
        let u = Units { scaled: false, multiplier: 1.0 };
        assert_eq!(convert("L1U > 253", &u).unwrap(), "L1U > 253");
    }

    #[test]
    fn what_the_server_cannot_run_is_refused_with_the_reason() {
        let cases = [
            ("S > 1000", "no totals"),
            ("L1Uavg > 253", "already its moving averages"),
            ("hour > 7 && L1U > 253", "no clock"),
            ("gen.L1U > 253", "sees only that server's meters"),
            ("L12U > 400", "phase-to-neutral"),
            ("L1alarm == 1", "alarms"),
            ("LII > 16", "not a variable of the server"),
            ("L1U ^ 2 > 5", "exclusive or"),
            ("L1U = 230", "`=` assigns"),
            ("L1U & 1", "bitwise"),
            ("max(L1U, L2U) > 253", "no functions"),
            ("L1U", "not a condition"),
            ("L1U > 1e3", "plain decimals"),
            ("L1U > .5", "plain decimals"),
            ("(L1U > 253", "not closed"),
            ("L1U < 2 < 3", "do not chain"),
            ("L1U > 253,", "one condition"),
            ("", "empty"),
        ];
        for (text, why) in cases {
            let e = conv(text).expect_err(text);
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn errors_point_at_the_culprit() {
        let e = convert("L1U > 253 && gen.L1I > 3", &Units::current(1.0)).unwrap_err();
        assert_eq!(e.offset, Some(13));
        let e = convert("L1U > 253 ^ 2", &Units::current(1.0)).unwrap_err();
        assert_eq!(e.offset, Some(10));
    }

    #[test]
    fn too_long_for_the_server_is_refused() {
        let text = "L1U > 253 || L2U > 253 || L3U > 253 || L1I > 16 || L2I > 16 || L3I > 16";
        let e = conv(text).unwrap_err();
        assert!(e.contains("the server keeps 63"), "{e}");
    }

    #[test]
    fn the_firmware_reads_its_odd_precedence() {
        // `&` binds tighter than `|`, which binds tighter than `^`; comparisons are one level.
        let n = parse_firmware("a ^ b | c & d").unwrap();
        let var = |s: &str| Node::Var(s.into());
        assert_eq!(
            n,
            Node::bin(
                Op::BitXor,
                var("a"),
                Node::bin(Op::BitOr, var("b"), Node::bin(Op::BitAnd, var("c"), var("d")))
            )
        );
        let n = parse_firmware("a < b == c").unwrap();
        assert_eq!(n, Node::bin(Op::Eq, Node::bin(Op::Lt, var("a"), var("b")), var("c")));
        assert_eq!(
            parse_firmware("2 ** 3 ** 2").unwrap(),
            Node::bin(Op::Pow, Node::Num(2.0), Node::bin(Op::Pow, Node::Num(3.0), Node::Num(2.0)))
        );
        assert!(parse_firmware("f(1)").is_err());
    }

    fn user_expr() -> impl Strategy<Value = String> {
        let var =
            prop::sample::select(vec!["L1U", "L2I", "L3P", "L1e", "L2f", "L3pf"]).prop_map(String::from);
        let num = (0u32..100_000).prop_map(|n| format!("{}", f64::from(n) / 100.0));
        let atom = prop_oneof![var.clone(), num.clone()];
        let value = (atom.clone(), prop::sample::select(vec!["+", "-", "*", "/"]), atom)
            .prop_map(|(a, o, b)| format!("{a} {o} {b}"));
        let cmp = (value, prop::sample::select(vec!["<", "<=", ">", ">=", "==", "!="]), num.clone())
            .prop_map(|(a, o, b)| format!("{a} {o} {b}"));
        cmp.prop_recursive(3, 8, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} && {b}")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) || {b}")),
                inner.prop_map(|a| format!("!({a})")),
            ]
        })
    }

    proptest! {
        /// Whatever is converted reads back, with the firmware's precedence, as the tree pmtr
        /// meant; and never panics on anything.
        #[test]
        fn conversion_round_trips_through_the_firmware_grammar(text in user_expr()) {
            if let Ok(out) = conv(&text) {
                prop_assert!(out.len() <= MAX_TEXT);
                prop_assert!(parse_firmware(&out).is_ok());
            }
        }

        #[test]
        fn garbage_never_panics(text in "[ -~]{0,40}") {
            let _ = conv(&text);
        }
    }
}

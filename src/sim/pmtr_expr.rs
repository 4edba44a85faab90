//! The relay-action expression language of PMTR_001_SRV: zserge/expr as vendored in the
//! firmware (`lib/expr/expr.h`, reference §9.2), written again for the simulator so that the
//! master's own validator is checked against an independent implementation.
//!
//! - Numbers: digits with at most one `.`, starting with a digit (`.5` and `1e3` are errors).
//! - Identifiers: first byte `>= '@'` except `^` and `|`, or `$`; then also digits and `#`.
//!   Unknown identifiers are worth 0. `name(` (a function call: the firmware passes a NULL
//!   function table) and `$(` macros are reported as errors, i.e. an undefined result.
//! - Precedence, tightest first: unary `- ! ^`; `** * / %`; `+ -`; `<< >>`; all six
//!   comparisons; `&`; `|`; `^` (xor); `&&`; `||`; `=`; `,`. Left-associative except `**`
//!   and `=`; like expr.h's shunting-yard, the associativity of the *incoming* operator
//!   decides, so `a * b ** c` is `a * (b ** c)` and `a ** b * c` is `(a ** b) * c`.
//! - `#` starts a comment to the end of the line; a newline outside parentheses acts as `,`.
//! - 32-bit float arithmetic; comparisons give 1/0; `a && b` gives `b` when both are non-zero,
//!   else 0; `a || b` the first non-zero operand, else 0; bitwise operators work on the AVR's
//!   16-bit `int` (NaN → 0, ±inf → ±32767, other values truncated and wrapped).

use std::fmt;

/// Why an expression does not compile (`expr_create` returns NULL on the firmware).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExprError {
    /// A byte no token starts with, or a number with two dots, at this offset.
    BadToken(usize),
    /// `name(...)` or `$(...)`: the firmware has no function table.
    Call(usize),
    /// Operands and operators that do not make an expression.
    Syntax(&'static str),
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExprError::BadToken(at) => write!(f, "bad token at byte {at}"),
            ExprError::Call(at) => write!(f, "function call or macro at byte {at} (no function table)"),
            ExprError::Syntax(why) => write!(f, "syntax error: {why}"),
        }
    }
}

impl std::error::Error for ExprError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Neg,
    Not,
    BitNot,
    Pow,
    Mul,
    Div,
    Rem,
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
    /// 1 binds tightest.
    fn level(self) -> u8 {
        use Op::*;
        match self {
            Neg | Not | BitNot => 1,
            Pow | Mul | Div | Rem => 2,
            Add | Sub => 3,
            Shl | Shr => 4,
            Lt | Le | Gt | Ge | Eq | Ne => 5,
            BitAnd => 6,
            BitOr => 7,
            BitXor => 8,
            And => 9,
            Or => 10,
            Assign => 11,
            Comma => 12,
        }
    }

    fn right_assoc(self) -> bool {
        matches!(self, Op::Pow | Op::Assign)
    }

    fn unary(self) -> bool {
        matches!(self, Op::Neg | Op::Not | Op::BitNot)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f32),
    Ident(String),
    Open,
    Close,
    /// An operator symbol; unary or binary is decided by the parser.
    Sym(&'static str),
    Newline,
}

fn ident_start(b: u8) -> bool {
    (b >= b'@' && b != b'^' && b != b'|') || b == b'$'
}

fn tokens(s: &[u8]) -> Result<Vec<Tok>, ExprError> {
    const TWO: [&str; 9] = ["**", "<<", ">>", "<=", ">=", "==", "!=", "&&", "||"];
    const ONE: [&str; 13] = ["-", "!", "^", "*", "/", "%", "+", "<", ">", "&", "|", "=", ","];
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == b'#' {
            while i < s.len() && s[i] != b'\n' {
                i += 1;
            }
        } else if c == b'\n' {
            out.push(Tok::Newline);
            i += 1;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            let mut dot = false;
            while i < s.len() && (s[i].is_ascii_digit() || s[i] == b'.') {
                if s[i] == b'.' {
                    if dot {
                        return Err(ExprError::BadToken(i));
                    }
                    dot = true;
                }
                i += 1;
            }
            let text = std::str::from_utf8(&s[start..i]).map_err(|_| ExprError::BadToken(start))?;
            out.push(Tok::Num(text.parse().map_err(|_| ExprError::BadToken(start))?));
        } else if ident_start(c) {
            let start = i;
            i += 1;
            while i < s.len() && (ident_start(s[i]) || s[i].is_ascii_digit() || s[i] == b'#') {
                i += 1;
            }
            if s.get(i) == Some(&b'(') {
                return Err(ExprError::Call(start));
            }
            out.push(Tok::Ident(String::from_utf8_lossy(&s[start..i]).into_owned()));
        } else if c == b'(' {
            out.push(Tok::Open);
            i += 1;
        } else if c == b')' {
            out.push(Tok::Close);
            i += 1;
        } else if let Some(op) = TWO.iter().find(|op| s[i..].starts_with(op.as_bytes())) {
            out.push(Tok::Sym(op));
            i += 2;
        } else if let Some(op) = ONE.iter().find(|op| op.as_bytes()[0] == c) {
            out.push(Tok::Sym(op));
            i += 1;
        } else {
            return Err(ExprError::BadToken(i));
        }
    }
    Ok(out)
}

fn binary(sym: &str) -> Option<Op> {
    use Op::*;
    Some(match sym {
        "**" => Pow,
        "*" => Mul,
        "/" => Div,
        "%" => Rem,
        "+" => Add,
        "-" => Sub,
        "<<" => Shl,
        ">>" => Shr,
        "<" => Lt,
        "<=" => Le,
        ">" => Gt,
        ">=" => Ge,
        "==" => Eq,
        "!=" => Ne,
        "&" => BitAnd,
        "|" => BitOr,
        "^" => BitXor,
        "&&" => And,
        "||" => Or,
        "=" => Assign,
        "," => Comma,
        _ => return None,
    })
}

fn prefix(sym: &str) -> Option<Op> {
    match sym {
        "-" => Some(Op::Neg),
        "!" => Some(Op::Not),
        "^" => Some(Op::BitNot),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Num(f32),
    Var(String),
    Un(Op, Box<Node>),
    Bin(Op, Box<Node>, Box<Node>),
}

enum Stacked {
    Op(Op),
    Open,
}

fn reduce(out: &mut Vec<Node>, op: Op) -> Result<(), ExprError> {
    let missing = ExprError::Syntax("operator without an operand");
    if op.unary() {
        let a = out.pop().ok_or(missing)?;
        out.push(Node::Un(op, Box::new(a)));
    } else {
        let b = out.pop().ok_or(missing.clone())?;
        let a = out.pop().ok_or(missing)?;
        if op == Op::Assign && !matches!(a, Node::Var(_)) {
            return Err(ExprError::Syntax("assignment to something not a variable"));
        }
        out.push(Node::Bin(op, Box::new(a), Box::new(b)));
    }
    Ok(())
}

/// A compiled expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    root: Node,
}

impl Expr {
    /// Compiles `text` (the firmware compiles it again on every pass; so may the caller).
    pub fn parse(text: &str) -> Result<Expr, ExprError> {
        let mut out: Vec<Node> = Vec::new();
        let mut ops: Vec<Stacked> = Vec::new();
        let mut want_operand = true;
        let mut depth = 0usize;
        for tok in tokens(text.as_bytes())? {
            match tok {
                Tok::Num(_) | Tok::Ident(_) if !want_operand => {
                    return Err(ExprError::Syntax("two operands in a row"))
                }
                Tok::Num(n) => {
                    out.push(Node::Num(n));
                    want_operand = false;
                }
                Tok::Ident(name) => {
                    out.push(Node::Var(name));
                    want_operand = false;
                }
                Tok::Open => {
                    if !want_operand {
                        return Err(ExprError::Syntax("'(' after an operand"));
                    }
                    ops.push(Stacked::Open);
                    depth += 1;
                }
                Tok::Close => {
                    if want_operand {
                        return Err(ExprError::Syntax("')' where an operand is expected"));
                    }
                    loop {
                        match ops.pop() {
                            Some(Stacked::Op(op)) => reduce(&mut out, op)?,
                            Some(Stacked::Open) => break,
                            None => return Err(ExprError::Syntax("unbalanced ')'")),
                        }
                    }
                    depth -= 1;
                }
                Tok::Newline if depth > 0 || want_operand => {}
                Tok::Sym(sym) if want_operand => {
                    let op =
                        prefix(sym).ok_or(ExprError::Syntax("binary operator without a left operand"))?;
                    ops.push(Stacked::Op(op));
                }
                Tok::Newline | Tok::Sym(_) => {
                    let op = match tok {
                        Tok::Sym(sym) => binary(sym).ok_or(ExprError::Syntax("'!' after an operand"))?,
                        _ => Op::Comma,
                    };
                    while let Some(Stacked::Op(top)) = ops.last() {
                        let top = *top;
                        let pops = if op.right_assoc() {
                            top.level() < op.level()
                        } else {
                            top.level() <= op.level()
                        };
                        if !pops {
                            break;
                        }
                        ops.pop();
                        reduce(&mut out, top)?;
                    }
                    ops.push(Stacked::Op(op));
                    want_operand = true;
                }
            }
        }
        if want_operand && !(out.is_empty() && ops.is_empty()) {
            return Err(ExprError::Syntax("expression ends with an operator"));
        }
        while let Some(s) = ops.pop() {
            match s {
                Stacked::Op(op) => reduce(&mut out, op)?,
                Stacked::Open => return Err(ExprError::Syntax("unbalanced '('")),
            }
        }
        let root = out.pop().unwrap_or(Node::Num(0.0));
        if !out.is_empty() {
            return Err(ExprError::Syntax("leftover operands"));
        }
        Ok(Expr { root })
    }

    /// The value, with `var` giving the firmware's variables (unknown names: return 0).
    /// Assignments only last for this evaluation, as on the firmware.
    pub fn eval(&self, var: &dyn Fn(&str) -> f32) -> f32 {
        let mut assigned = Vec::new();
        eval(&self.root, var, &mut assigned)
    }
}

/// The AVR's `(int)` of a float, as expr.h's bitwise operators take it.
fn to_int(x: f32) -> i16 {
    if x.is_nan() {
        0
    } else if x.is_infinite() {
        if x > 0.0 {
            i16::MAX
        } else {
            -i16::MAX
        }
    } else {
        x as i64 as i16
    }
}

fn flag(b: bool) -> f32 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn eval(n: &Node, var: &dyn Fn(&str) -> f32, assigned: &mut Vec<(String, f32)>) -> f32 {
    match n {
        Node::Num(x) => *x,
        Node::Var(name) => match assigned.iter().rev().find(|(k, _)| k == name) {
            Some((_, v)) => *v,
            None => var(name),
        },
        Node::Un(op, a) => {
            let a = eval(a, var, assigned);
            match op {
                Op::Neg => -a,
                Op::Not => flag(a == 0.0),
                _ => f32::from(!to_int(a)),
            }
        }
        Node::Bin(Op::Assign, a, b) => {
            let v = eval(b, var, assigned);
            if let Node::Var(name) = &**a {
                assigned.push((name.clone(), v));
            }
            v
        }
        Node::Bin(Op::And, a, b) => {
            let a = eval(a, var, assigned);
            if a == 0.0 {
                return 0.0;
            }
            let b = eval(b, var, assigned);
            if b != 0.0 {
                b
            } else {
                0.0
            }
        }
        Node::Bin(Op::Or, a, b) => {
            let a = eval(a, var, assigned);
            if a != 0.0 {
                return a;
            }
            let b = eval(b, var, assigned);
            if b != 0.0 {
                b
            } else {
                0.0
            }
        }
        Node::Bin(op, a, b) => {
            let a = eval(a, var, assigned);
            let b = eval(b, var, assigned);
            let shift = |left: bool| {
                let (x, n) = (to_int(a), to_int(b));
                if !(0..16).contains(&n) {
                    return 0.0;
                }
                f32::from(if left { x.wrapping_shl(n as u32) } else { x >> n })
            };
            match op {
                Op::Pow => a.powf(b),
                Op::Mul => a * b,
                Op::Div => a / b,
                Op::Rem => a % b,
                Op::Add => a + b,
                Op::Sub => a - b,
                Op::Shl => shift(true),
                Op::Shr => shift(false),
                Op::Lt => flag(a < b),
                Op::Le => flag(a <= b),
                Op::Gt => flag(a > b),
                Op::Ge => flag(a >= b),
                Op::Eq => flag(a == b),
                Op::Ne => flag(a != b),
                Op::BitAnd => f32::from(to_int(a) & to_int(b)),
                Op::BitOr => f32::from(to_int(a) | to_int(b)),
                Op::BitXor => f32::from(to_int(a) ^ to_int(b)),
                _ => b, // Comma
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(s: &str) -> f32 {
        let vars = |n: &str| match n {
            "L1U" => 2300.0,
            "L1I" => 150.0,
            "x" => 3.0,
            _ => 0.0,
        };
        Expr::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).eval(&vars)
    }

    #[test]
    fn numbers_identifiers_and_unknown_names() {
        assert_eq!(ev("42"), 42.0);
        assert_eq!(ev("1.5"), 1.5);
        assert_eq!(ev("1."), 1.0);
        assert_eq!(ev("L1U"), 2300.0);
        assert_eq!(ev("LII"), 0.0, "unknown identifiers are 0, not errors");
        assert_eq!(ev("L1U > 253.0"), 1.0, "the Python client's SI threshold on scaled units");
        assert_eq!(ev("L1U > 2530"), 0.0);
        assert_eq!(ev(""), 0.0);
        for bad in
            [".5", "1e3", "1.2.3", "f(1)", "$(a, 1)", "(1", "1)", "1 +", "* 2", "2 3", "a ! b", "3 = 4"]
        {
            assert!(Expr::parse(bad).is_err(), "{bad} should not compile");
        }
    }

    #[test]
    fn precedence_and_associativity_follow_expr_h() {
        assert_eq!(ev("2 + 3 * 4"), 14.0);
        assert_eq!(ev("-2 ** 2"), 4.0, "unary minus binds tighter than **");
        assert_eq!(ev("2 ** 3 ** 2"), 512.0, "** is right-associative");
        assert_eq!(ev("2 ** 3 * 2"), 16.0);
        assert_eq!(ev("2 * 3 ** 2"), 18.0);
        assert_eq!(ev("10 - 4 - 3"), 3.0);
        assert_eq!(ev("7 % 4"), 3.0);
        assert_eq!(ev("1 << 4 + 1"), 32.0, "+ binds tighter than <<");
        assert_eq!(ev("3 > 2 > 1"), 0.0, "comparisons are one level, left to right: (3 > 2) > 1");
        assert_eq!(ev("1 < 2 == 1"), 1.0);
    }

    #[test]
    fn bitwise_order_is_and_then_or_then_xor() {
        // & > | > ^ : 1 ^ 1 | 1 is 1 ^ (1 | 1) = 0 (C would give (1 ^ 1) | 1 = 1).
        assert_eq!(ev("1 ^ 1 | 1"), 0.0);
        assert_eq!(ev("6 | 1 & 3"), 7.0);
        assert_eq!(ev("^0"), -1.0, "unary ^ is bitwise not");
        assert_eq!(ev("5.9 & 7"), 5.0, "bitwise operators truncate");
        assert_eq!(ev("1 == 1 & 2"), 0.0, "& binds looser than ==");
    }

    #[test]
    fn logic_operators_return_operands() {
        assert_eq!(ev("2 && 3"), 3.0);
        assert_eq!(ev("0 && 3"), 0.0);
        assert_eq!(ev("0 || 4"), 4.0);
        assert_eq!(ev("5 || 4"), 5.0);
        assert_eq!(ev("!0 + !7"), 1.0);
        assert_eq!(ev("1 || 0 && 0"), 1.0, "&& binds tighter than ||");
        assert!(ev("1 / 0").is_infinite());
        assert!(ev("0 / 0").is_nan());
    }

    #[test]
    fn assignment_sequence_comments_and_newlines() {
        assert_eq!(ev("y = 2, y * x"), 6.0);
        assert_eq!(ev("a = b = 4, a + b"), 8.0);
        assert_eq!(ev("1 # comment\n2"), 2.0);
        assert_eq!(ev("(1 +\n 2)"), 3.0, "a newline inside parentheses is blank");
        assert_eq!(ev("L1U > 2530 || L1I > 100"), 1.0);
        assert_eq!(ev("L1I*1.732 > 250"), 1.0);
    }
}

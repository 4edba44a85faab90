//! Trigger expressions: evalexpr 11.3 (MIT), parsed and checked once, evaluated per reading.
//! A leaf of its own (no `crate::` import): the configuration checks expressions with it at
//! load and the trigger engine evaluates them (re-exported as `trigger::expr`).
//!
//! Checks at compile time, each with the position of the culprit in the text:
//! - syntax (evalexpr's parser);
//! - every variable is known to the caller's resolver (which says why not: no such meter, a
//!   variable the meter does not have…);
//! - no assignment (`=` written for `==`) and no `;` chains: an expression only reads;
//! - the result is true or false, and no operator is given a value of the wrong type (the
//!   expression is evaluated once with every variable set);
//! - `==` and `!=` never compare a decimal variable (all measurements) with a whole-number
//!   literal: evalexpr's `230.0 == 230` is false, so `L1U == 230` could never be true.
//!
//! Evaluation reuses one small context, filled with the expression's own variables only: no
//! allocation per variable, no hash map.

use evalexpr::{Context, EvalexprError, EvalexprResult, FloatType, IntType, Node, Operator, Value};

/// The type of a variable's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A decimal number (every measurement).
    Number,
    /// A whole number (time of day, weekday, alarm flags).
    Integer,
}

/// Why an expression was refused or could not be evaluated.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ExprError {
    #[error("does not parse: {message}")]
    Syntax { message: String },
    /// `offset`: byte offset of the variable in the text.
    #[error("`{name}`: {message}")]
    Variable { name: String, offset: usize, message: String },
    #[error("{message}")]
    Type { offset: Option<usize>, message: String },
    #[error("evaluation failed: {message}")]
    Eval { message: String },
}

impl ExprError {
    /// Byte offset in the expression text of what the error is about, when known.
    pub fn offset(&self) -> Option<usize> {
        match self {
            ExprError::Variable { offset, .. } => Some(*offset),
            ExprError::Type { offset, .. } => *offset,
            _ => None,
        }
    }
}

/// The values of an expression's variables, in [`Expression::variables`] order.
#[derive(Debug, Default)]
struct Slots {
    names: Vec<String>,
    values: Vec<Value>,
}

impl Context for Slots {
    fn get_value(&self, identifier: &str) -> Option<&Value> {
        self.names.iter().position(|n| n == identifier).map(|i| &self.values[i])
    }

    fn call_function(&self, identifier: &str, _argument: &Value) -> EvalexprResult<Value> {
        Err(EvalexprError::FunctionIdentifierNotFound(identifier.to_owned()))
    }

    fn are_builtin_functions_disabled(&self) -> bool {
        false
    }

    fn set_builtin_functions_disabled(&mut self, _disabled: bool) -> EvalexprResult<()> {
        Err(EvalexprError::ContextNotMutable)
    }
}

/// A compiled trigger expression.
#[derive(Debug)]
pub struct Expression {
    text: String,
    tree: Node,
    kinds: Vec<Kind>,
    slots: Slots,
}

impl Expression {
    /// Parses `text` and checks it. `resolve` says the kind of each variable, or why it is not
    /// known (the message goes to the user as is).
    pub fn compile(
        text: &str,
        resolve: &mut dyn FnMut(&str) -> Result<Kind, String>,
    ) -> Result<Expression, ExprError> {
        let tree =
            evalexpr::build_operator_tree(text).map_err(|e| ExprError::Syntax { message: e.to_string() })?;
        let mut names: Vec<String> = Vec::new();
        let mut kinds = Vec::new();
        for name in tree.iter_variable_identifiers() {
            if names.iter().any(|n| n == name) {
                continue;
            }
            let kind = resolve(name).map_err(|message| ExprError::Variable {
                name: name.to_owned(),
                offset: find_word(text, name).unwrap_or(0),
                message,
            })?;
            names.push(name.to_owned());
            kinds.push(kind);
        }
        check_operators(&tree, text, &names, &kinds)?;
        let values = kinds.iter().map(|k| placeholder(*k)).collect();
        let mut e = Expression { text: text.to_owned(), tree, kinds, slots: Slots { names, values } };
        match e.tree.eval_with_context(&e.slots) {
            Ok(Value::Boolean(_)) => {}
            Ok(other) => {
                return Err(ExprError::Type {
                    offset: None,
                    message: format!(
                        "gives {}, not true or false: compare it, e.g. `{} > 0`",
                        type_name(&other),
                        text.trim()
                    ),
                })
            }
            Err(err) => return Err(ExprError::Type { offset: None, message: type_message(&err) }),
        }
        // Leave no value from the check behind.
        for v in &mut e.slots.values {
            *v = Value::Empty;
        }
        Ok(e)
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The distinct variables the expression reads, in order of first appearance.
    pub fn variables(&self) -> &[String] {
        &self.slots.names
    }

    /// Evaluates with `values` in [`Expression::variables`] order. `Ok(None)` when a value is
    /// missing (a gap): unknown, never false.
    pub fn eval(&mut self, values: &[Option<f64>]) -> Result<Option<bool>, ExprError> {
        for ((slot, value), kind) in self.slots.values.iter_mut().zip(values).zip(&self.kinds) {
            let Some(v) = *value else { return Ok(None) };
            *slot = match kind {
                Kind::Number => Value::Float(v as FloatType),
                Kind::Integer => Value::Int(v.round() as IntType),
            };
        }
        match self.tree.eval_with_context(&self.slots) {
            Ok(Value::Boolean(b)) => Ok(Some(b)),
            Ok(other) => Err(ExprError::Eval { message: format!("gave {other}, not true or false") }),
            Err(e) => Err(ExprError::Eval { message: e.to_string() }),
        }
    }
}

fn placeholder(kind: Kind) -> Value {
    match kind {
        Kind::Number => Value::Float(1.0),
        Kind::Integer => Value::Int(1),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Float(_) => "a number",
        Value::Int(_) => "a whole number",
        Value::Boolean(_) => "true or false",
        Value::Tuple(_) => "a tuple",
        Value::Empty => "nothing",
    }
}

fn type_message(e: &EvalexprError) -> String {
    match e {
        EvalexprError::ContextNotMutable => "assigns a value: compare with `==`, not `=`".to_owned(),
        other => format!("wrong type: {other}"),
    }
}

/// The byte offset of `word` in `text` as a whole identifier.
fn find_word(text: &str, word: &str) -> Option<usize> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_' || c == '.' || c == ':';
    let mut from = 0;
    while let Some(i) = text[from..].find(word).map(|i| i + from) {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        if !before.is_some_and(is_ident) && !after.is_some_and(is_ident) {
            return Some(i);
        }
        from = i + word.len();
    }
    None
}

fn check_operators(node: &Node, text: &str, names: &[String], kinds: &[Kind]) -> Result<(), ExprError> {
    match node.operator() {
        Operator::Assign
        | Operator::AddAssign
        | Operator::SubAssign
        | Operator::MulAssign
        | Operator::DivAssign
        | Operator::ModAssign
        | Operator::ExpAssign
        | Operator::AndAssign
        | Operator::OrAssign
        | Operator::VariableIdentifierWrite { .. } => {
            let offset = text.find('=');
            return Err(ExprError::Type {
                offset,
                message: "assigns a value: compare with `==`, not `=`".to_owned(),
            });
        }
        Operator::Chain => {
            return Err(ExprError::Type {
                offset: text.find(';'),
                message: "`;` chains statements: a trigger is one condition (join them with && or ||)"
                    .to_owned(),
            })
        }
        Operator::Eq | Operator::Neq => {
            let children = node.children();
            for (a, b) in [(0, 1), (1, 0)] {
                let (Some(var), Some(lit)) = (children.get(a), children.get(b)) else { continue };
                let Operator::VariableIdentifierRead { identifier } = var.operator() else { continue };
                let Operator::Const { value: Value::Int(n) } = lit.operator() else { continue };
                let Some(i) = names.iter().position(|x| x == identifier) else { continue };
                if kinds[i] == Kind::Number {
                    let op = if matches!(node.operator(), Operator::Eq) { "==" } else { "!=" };
                    return Err(ExprError::Type {
                        offset: find_word(text, identifier),
                        message: format!(
                            "`{identifier} {op} {n}` compares a decimal measurement with a whole number, \
                             which evalexpr never finds equal: write `{identifier} {op} {n}.0`, or better a \
                             range (`{identifier} > {} && {identifier} < {}`)",
                            *n as f64 - 0.5,
                            *n as f64 + 0.5
                        ),
                    });
                }
            }
        }
        _ => {}
    }
    node.children().iter().try_for_each(|c| check_operators(c, text, names, kinds))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["L1U", "L2U", "L3U", "L1I", "L1f", "L2f", "L3f", "gen.L1I", "P"];

    fn resolve(n: &str) -> Result<Kind, String> {
        match n {
            "hour" | "weekday" => Ok(Kind::Integer),
            _ if NAMES.contains(&n) => Ok(Kind::Number),
            _ => Err("unknown variable".into()),
        }
    }

    fn compile(text: &str) -> Result<Expression, ExprError> {
        Expression::compile(text, &mut resolve)
    }

    fn value(n: &str) -> Option<f64> {
        match n {
            "L1U" => Some(230.0),
            "L2U" => Some(254.0),
            "L3U" => Some(231.0),
            "L1I" => Some(17.0),
            "hour" => Some(22.0),
            "weekday" => Some(6.0),
            "gen.L1I" => Some(0.5),
            "L1f" | "L2f" | "L3f" => Some(49.0),
            _ => None,
        }
    }

    fn eval(e: &mut Expression) -> Option<bool> {
        let values: Vec<_> = e.variables().iter().map(|n| value(n)).collect();
        e.eval(&values).unwrap()
    }

    #[test]
    fn seed_examples_compile_and_evaluate() {
        let cases = [
            ("(L1U > 253) || (L2U > 253) || (L3U > 253)", true),
            ("L1I > 16", true),
            ("L1I > 16 && hour >= 22", true),
            ("(L1f < 49.1) && (L2f < 49.1) && (L3f < 49.1)", true),
            ("gen.L1I > 0.3", true),
            ("(L1U + L2U + L3U) / 3 < 207", false),
            ("weekday == 6 || weekday == 7", true),
            ("max(L1U, L2U) > 250", true),
        ];
        for (text, want) in cases {
            let mut e = compile(text).unwrap();
            assert_eq!(eval(&mut e), Some(want), "{text}");
        }
    }

    #[test]
    fn a_gap_is_unknown_not_false() {
        let mut e = compile("L1U > 100 || P > 100").unwrap();
        assert_eq!(eval(&mut e), None);
    }

    #[test]
    fn unknown_variable_is_named_with_its_position() {
        let err = compile("L1U > 3 && L1V < 2").unwrap_err();
        assert_eq!(
            err,
            ExprError::Variable { name: "L1V".into(), offset: 11, message: "unknown variable".into() }
        );
    }

    #[test]
    fn type_errors() {
        assert!(matches!(compile("L1U > ("), Err(ExprError::Syntax { .. })));
        let e = compile("L1U + 1").unwrap_err();
        assert!(e.to_string().contains("not true or false"), "{e}");
        let e = compile("L1U && true").unwrap_err();
        assert!(e.to_string().contains("wrong type"), "{e}");
        let e = compile("L1U = 230").unwrap_err();
        assert!(e.to_string().contains("`==`"), "{e}");
        let e = compile("L1U > 1; L2U > 2").unwrap_err();
        assert!(e.to_string().contains("`;`"), "{e}");
        let e = compile("L1U == 230").unwrap_err();
        assert_eq!(e.offset(), Some(0));
        assert!(e.to_string().contains("L1U == 230.0"), "{e}");
        assert!(compile("230 != L1U").is_err());
        assert!(compile("L1U == 230.0").is_ok());
        assert!(compile("hour == 22").is_ok(), "whole numbers compare with whole numbers");
    }

    #[test]
    fn the_context_is_reused() {
        let mut e = compile("L1U > 253").unwrap();
        assert_eq!(e.eval(&[Some(260.0)]).unwrap(), Some(true));
        assert_eq!(e.eval(&[Some(240.0)]).unwrap(), Some(false));
        assert_eq!(e.eval(&[None]).unwrap(), None);
    }

    #[test]
    fn find_word_skips_longer_names() {
        assert_eq!(find_word("L12U > 1 && L1U > 2", "L1U"), Some(12));
        assert_eq!(find_word("gen.L1U > 1 && L1U", "L1U"), Some(15));
    }
}

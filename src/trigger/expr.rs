//! Trigger expressions: evalexpr 11.3 (MIT) compiled once, checked against the known variables.

use evalexpr::{ContextWithMutableVariables, HashMapContext, Node, Value};

/// Why an expression was refused or could not be evaluated.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExprError {
    #[error("expression `{text}` does not parse: {message}")]
    Syntax { text: String, message: String },
    #[error("expression `{text}`: unknown variable `{name}`{}", hint(close))]
    UnknownVariable { text: String, name: String, close: Vec<String> },
    #[error("expression `{text}` failed: {message}")]
    Eval { text: String, message: String },
    #[error("expression `{text}` gives {value}, not true or false")]
    NotBoolean { text: String, value: String },
}

fn hint(close: &[String]) -> String {
    if close.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", close.join(", "))
    }
}

/// A compiled trigger expression. Evaluation reuses one context, filled per evaluation with the
/// expression's own variables only.
#[derive(Debug)]
pub struct Expression {
    text: String,
    tree: Node,
    variables: Vec<String>,
    context: HashMapContext,
}

impl Expression {
    /// Parses `text` and checks every variable with `known`; see
    /// [`Expression::compile_with_hints`] for suggestions of close names.
    pub fn compile(text: &str, known: &dyn Fn(&str) -> bool) -> Result<Expression, ExprError> {
        Self::compile_with_hints(text, known, &[])
    }

    /// As [`Expression::compile`]; an unknown variable's error lists the `candidates` within
    /// edit distance 2 of it (case-insensitive, closest first, at most 3).
    pub fn compile_with_hints(
        text: &str,
        known: &dyn Fn(&str) -> bool,
        candidates: &[&str],
    ) -> Result<Expression, ExprError> {
        let tree = evalexpr::build_operator_tree(text)
            .map_err(|e| ExprError::Syntax { text: text.into(), message: e.to_string() })?;
        let mut variables: Vec<String> = Vec::new();
        for name in tree.iter_variable_identifiers() {
            if !known(name) {
                let close = close_names(name, candidates);
                return Err(ExprError::UnknownVariable { text: text.into(), name: name.into(), close });
            }
            if !variables.iter().any(|v| v == name) {
                variables.push(name.to_string());
            }
        }
        Ok(Expression { text: text.into(), tree, variables, context: HashMapContext::new() })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The distinct variables the expression reads.
    pub fn variables(&self) -> &[String] {
        &self.variables
    }

    /// Evaluates with the values given by `vars`. `Ok(None)` when a variable has no value (a
    /// gap): unknown, never false.
    pub fn eval(&mut self, vars: &impl Fn(&str) -> Option<f64>) -> Result<Option<bool>, ExprError> {
        for name in &self.variables {
            let Some(v) = vars(name) else { return Ok(None) };
            self.context
                .set_value(name.clone(), Value::Float(v))
                .map_err(|e| ExprError::Eval { text: self.text.clone(), message: e.to_string() })?;
        }
        match self.tree.eval_with_context(&self.context) {
            Ok(Value::Boolean(b)) => Ok(Some(b)),
            Ok(other) => Err(ExprError::NotBoolean { text: self.text.clone(), value: other.to_string() }),
            Err(e) => Err(ExprError::Eval { text: self.text.clone(), message: e.to_string() }),
        }
    }
}

/// Candidates within edit distance 2 (case-insensitive), closest first, at most 3.
fn close_names(name: &str, candidates: &[&str]) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> = candidates
        .iter()
        .map(|c| (distance(&name.to_lowercase(), &c.to_lowercase()), *c))
        .filter(|(d, _)| *d <= 2)
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, c)| c.to_string()).collect()
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["L1U", "L2U", "L3U", "L1I", "hour", "minute", "weekday", "gen.L1I", "P"];

    fn known(n: &str) -> bool {
        NAMES.contains(&n)
    }

    fn vals(n: &str) -> Option<f64> {
        match n {
            "L1U" => Some(230.0),
            "L2U" => Some(254.0),
            "L3U" => Some(231.0),
            "L1I" => Some(17.0),
            "hour" => Some(22.0),
            "gen.L1I" => Some(0.5),
            _ => None,
        }
    }

    #[test]
    fn seed_examples_compile_and_evaluate() {
        let cases = [
            ("L1U > 253 || L2U > 253 || L3U > 253", true),
            ("L1I > 16 && hour >= 22", true),
            ("gen.L1I > 0.3", true),
            ("(L1U + L2U + L3U) / 3 < 207", false),
        ];
        for (text, want) in cases {
            let mut e = Expression::compile(text, &known).unwrap();
            assert_eq!(e.eval(&vals).unwrap(), Some(want), "{text}");
        }
    }

    #[test]
    fn gap_is_unknown_not_false() {
        let mut e = Expression::compile("P > 100", &known).unwrap();
        assert_eq!(e.eval(&vals).unwrap(), None);
    }

    #[test]
    fn unknown_variable_is_named_with_close_names() {
        let err = Expression::compile_with_hints("L1V > 3", &known, NAMES).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`L1V`") && msg.contains("L1U"), "{msg}");
    }

    #[test]
    fn syntax_error_and_non_boolean_are_errors() {
        assert!(matches!(Expression::compile("L1U > (", &known), Err(ExprError::Syntax { .. })));
        let mut e = Expression::compile("L1U + 1", &known).unwrap();
        assert!(matches!(e.eval(&vals), Err(ExprError::NotBoolean { .. })));
    }

    #[test]
    fn context_is_reused_across_evaluations() {
        let mut e = Expression::compile("L1U > 253", &known).unwrap();
        assert_eq!(e.eval(&|_: &str| Some(260.0)).unwrap(), Some(true));
        assert_eq!(e.eval(&|_: &str| Some(240.0)).unwrap(), Some(false));
    }
}

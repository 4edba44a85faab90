//! "Did you mean": the edit distance behind the suggestions of the configuration loader and of
//! the trigger expressions and control requests.
//!
//! The words compared come from a configuration file or a control request, and may be hostile:
//! a key of megabytes must not make `check-config` or a reload quadratic. Words longer than
//! [`LONGEST`] characters get no suggestion and cost nothing; two words whose lengths differ by
//! more than the distance allowed are never compared. Each comparison is at most
//! `(LONGEST + 1)²` steps, whatever the input.

/// The longest word, in characters, that is compared at all.
pub const LONGEST: usize = 64;

/// The optimal string alignment distance (Levenshtein with transpositions, on characters,
/// case-insensitive) between `a` and `b` when it is at most `max`; None when it is larger or
/// when either word is longer than [`LONGEST`]. `steps` is increased by the table cells
/// computed (the work done), for tests.
pub fn distance_within(a: &str, b: &str, max: usize, steps: &mut u64) -> Option<usize> {
    // A character is at most 4 bytes: longer strings are refused before being read.
    if a.len() > 4 * LONGEST || b.len() > 4 * LONGEST {
        return None;
    }
    let a: Vec<char> = a.chars().flat_map(char::to_lowercase).collect();
    let b: Vec<char> = b.chars().flat_map(char::to_lowercase).collect();
    if a.len() > LONGEST || b.len() > LONGEST || a.len().abs_diff(b.len()) > max {
        return None;
    }
    let width = b.len() + 1;
    // d[i * width + j]: the distance between the first i characters of a and the first j of b.
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        d[i * width] = i;
        for j in 1..=b.len() {
            *steps += 1;
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = v;
        }
    }
    Some(d[a.len() * width + b.len()]).filter(|&v| v <= max)
}

/// " (did you mean X, Y?)" for the candidates within edit distance 2 of `word`
/// (case-insensitive, closest first, at most 3), or "".
pub fn expr_hint(word: &str, candidates: &[&str]) -> String {
    let mut steps = 0;
    let mut scored: Vec<(usize, &str)> =
        candidates.iter().filter_map(|c| distance_within(word, c, 2, &mut steps).map(|d| (d, *c))).collect();
    scored.sort();
    let close: Vec<&str> = scored.into_iter().take(3).map(|(_, c)| c).collect();
    if close.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", close.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distance(a: &str, b: &str) -> Option<usize> {
        distance_within(a, b, usize::MAX, &mut 0)
    }

    #[test]
    fn distances() {
        assert_eq!(distance("adress", "address"), Some(1));
        assert_eq!(distance("ab", "ba"), Some(1), "a transposition is one edit");
        assert_eq!(distance("Poll", "poll"), Some(0), "case does not count");
        assert_eq!(distance("", "abc"), Some(3));
        assert_eq!(distance("kitten", "sitting"), Some(3));
        assert_eq!(distance_within("kitten", "sitting", 2, &mut 0), None);
        assert_eq!(distance("ü", "u"), Some(1));
    }

    #[test]
    fn a_hostile_word_costs_no_comparison() {
        let huge = "a".repeat(1 << 20);
        let mut steps = 0;
        for _ in 0..1000 {
            assert_eq!(distance_within(&huge, "address", 2, &mut steps), None);
            assert_eq!(distance_within("address", &huge, 2, &mut steps), None);
        }
        let just_over = "é".repeat(LONGEST + 1);
        assert_eq!(distance_within(&just_over, &just_over, 2, &mut steps), None);
        assert_eq!(steps, 0, "words over {LONGEST} characters are never compared");
    }

    #[test]
    fn one_comparison_is_bounded_by_the_longest_word() {
        let mut steps = 0;
        let a = "ab".repeat(LONGEST / 2);
        let b = "ba".repeat(LONGEST / 2);
        assert!(distance_within(&a, &b, usize::MAX, &mut steps).is_some());
        assert_eq!(steps, (LONGEST * LONGEST) as u64);
        let mut steps = 0;
        assert_eq!(distance_within("a", &"b".repeat(LONGEST), 2, &mut steps), None);
        assert_eq!(steps, 0, "lengths farther apart than the distance allowed are not compared");
    }
}

#[cfg(test)]
mod hint_tests {
    use super::*;

    #[test]
    fn hints() {
        assert_eq!(expr_hint("L1V", &["L1U", "L1I", "P"]), " (did you mean L1I, L1U?)");
        assert_eq!(expr_hint("zzzz", &["L1U"]), "");
    }

    #[test]
    fn a_megabyte_variable_gets_no_hint() {
        assert_eq!(expr_hint(&"L".repeat(1 << 20), &["L1U", "L1I", "P"]), "");
    }
}

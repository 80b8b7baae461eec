//! Splits a streaming reply into clauses that TTS can start speaking while
//! the model is still writing.

/// Cuts streamed text into clauses: at `.`, `!`, `?`, `;` and `:` followed
/// by whitespace, and at a comma followed by whitespace once the clause has
/// at least `min_words_before_comma` words (short "Well, ..." openers stay
/// with their sentence). A mark only counts once the whitespace after it has
/// arrived, so "3.5" or "e.g" never split mid-token.
#[derive(Debug, Clone)]
pub struct ClauseSplitter {
    pending: String,
    min_words_before_comma: usize,
}

impl ClauseSplitter {
    /// A splitter that cuts at commas after `min_words_before_comma` words.
    pub fn new(min_words_before_comma: usize) -> Self {
        ClauseSplitter {
            pending: String::new(),
            min_words_before_comma,
        }
    }

    /// Adds a token; appends every clause it completes to `out`.
    pub fn push(&mut self, token: &str, out: &mut Vec<String>) {
        self.pending.push_str(token);
        while let Some(end) = self.boundary() {
            let clause = self.pending[..end].trim().to_owned();
            self.pending.drain(..end);
            if !clause.is_empty() {
                out.push(clause);
            }
        }
    }

    /// The rest of the text once the stream ended, if any.
    pub fn finish(&mut self) -> Option<String> {
        let rest = self.pending.trim().to_owned();
        self.pending.clear();
        (!rest.is_empty()).then_some(rest)
    }

    /// The byte index just past the first clause-ending mark, if any.
    fn boundary(&self) -> Option<usize> {
        let mut chars = self.pending.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            let &(_, next) = chars.peek()?;
            if !next.is_whitespace() {
                continue;
            }
            let end = i + c.len_utf8();
            let cut = match c {
                '.' | '!' | '?' | ';' | ':' => true,
                ',' => {
                    self.pending[..end].split_whitespace().count() >= self.min_words_before_comma
                }
                _ => false,
            };
            if cut {
                return Some(end);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(tokens: &[&str], min_words: usize) -> Vec<String> {
        let mut splitter = ClauseSplitter::new(min_words);
        let mut out = Vec::new();
        for t in tokens {
            splitter.push(t, &mut out);
        }
        out.extend(splitter.finish());
        out
    }

    #[test]
    fn splits_at_sentence_marks_once_whitespace_follows() {
        assert_eq!(
            split(&["Hello", "!", " How", " are", " you?", " Fine", "."], 4),
            vec!["Hello!", "How are you?", "Fine."]
        );
        assert_eq!(
            split(&["It costs 3", ".5 dollars; ", "ok: ", "bye"], 4),
            vec!["It costs 3.5 dollars;", "ok:", "bye"]
        );
    }

    #[test]
    fn commas_split_only_after_enough_words() {
        assert_eq!(
            split(&["Well, ", "I think we can do that, ", "for sure."], 4),
            vec!["Well, I think we can do that,", "for sure."]
        );
    }

    #[test]
    fn a_clause_is_released_as_soon_as_it_is_complete() {
        let mut splitter = ClauseSplitter::new(4);
        let mut out = Vec::new();
        splitter.push("Sure. ", &mut out);
        assert_eq!(out, vec!["Sure."]);
        splitter.push("Let", &mut out);
        assert_eq!(out.len(), 1);
    }
}

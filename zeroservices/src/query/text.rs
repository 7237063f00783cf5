//! `$text`: a MongoDB-like full-text search over every string of a document.

use serde_json::Value;

/// A parsed `$text` search.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct TextSearch {
    words: Vec<String>,
    phrases: Vec<String>,
    excluded_words: Vec<String>,
    excluded_phrases: Vec<String>,
}

fn split_words(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

impl TextSearch {
    pub(crate) fn parse(search: &str) -> Self {
        let mut out = Self::default();
        let mut chars = search.chars().peekable();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                chars.next();
                continue;
            }
            let negated = c == '-';
            if negated {
                chars.next();
            }
            if chars.peek() == Some(&'"') {
                chars.next();
                let phrase: String = chars.by_ref().take_while(|&c| c != '"').collect();
                let phrase = phrase.trim().to_lowercase();
                if !phrase.is_empty() {
                    if negated {
                        out.excluded_phrases.push(phrase);
                    } else {
                        out.phrases.push(phrase);
                    }
                }
                continue;
            }
            let mut token = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '"' {
                    break;
                }
                token.push(c);
                chars.next();
            }
            let target = if negated {
                &mut out.excluded_words
            } else {
                &mut out.words
            };
            target.extend(split_words(&token));
        }
        out
    }

    pub(crate) fn matches(&self, doc: &Value) -> bool {
        if self.words.is_empty() && self.phrases.is_empty() {
            return false;
        }
        let mut texts = Vec::new();
        strings(doc, &mut texts);
        let texts: Vec<String> = texts.iter().map(|s| s.to_lowercase()).collect();
        let has_word = |w: &String| texts.iter().any(|t| split_words(t).any(|x| x == *w));
        let has_phrase = |p: &String| texts.iter().any(|t| t.contains(p.as_str()));
        if self.excluded_words.iter().any(has_word) || self.excluded_phrases.iter().any(has_phrase)
        {
            return false;
        }
        if self.phrases.is_empty() {
            self.words.iter().any(has_word)
        } else {
            // As MongoDB: with phrases, a document must contain every phrase; plain words only
            // weigh on the score.
            self.phrases.iter().all(has_phrase)
        }
    }
}

fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
        Value::Object(map) => map.values().for_each(|i| strings(i, out)),
        _ => {}
    }
}

/// Whether `doc` matches a MongoDB `$text`-like `search`.
///
/// The search splits into words at whitespace and punctuation; a document matches if any word
/// appears as a whole word, case-insensitively, in any string anywhere in the document. A
/// `"quoted phrase"` must appear as such (case-insensitive substring); when the search holds
/// phrases, every phrase must appear and the plain words do not restrict the match. A term or
/// phrase prefixed with `-` excludes the documents containing it. A search with no positive term
/// matches nothing.
pub fn text_matches(doc: &Value, search: &str) -> bool {
    TextSearch::parse(search).matches(doc)
}

//! The commands help lines suggest. A suggestion is only worth printing if
//! it runs as printed: it names the stack as the user gave it, repeats the
//! flags that chose the cluster and the state, and quotes what a shell
//! would split.

use std::borrow::Cow;
use std::path::Path;

use rayform::stack::StateLocation;

use super::args::Global;

/// `rayform WORDS…`, with the location flags of this run, for a help line.
pub fn rayform<'a>(g: &'a Global, words: impl IntoIterator<Item = &'a str>) -> String {
    let given = g.given.iter().map(|w| quote(w));
    std::iter::once(Cow::Borrowed("rayform"))
        .chain(given)
        .chain(words.into_iter().map(quote))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The library cannot know which stack file a run was given, so its help
/// lines name it `STACK`: in every backticked `rayform …` command of `text`,
/// the word `STACK` becomes `stack` (with this run's location flags), so the
/// line runs as printed. Without a stack file the text is left as it is.
pub fn fill_stack(text: &str, stack: Option<&Path>, g: &Global) -> String {
    let Some(stack) = stack else {
        return text.to_string();
    };
    let stack = path(stack);
    let mut out = String::new();
    let mut parts = text.split('`');
    // Odd-numbered parts are inside backticks.
    for (i, part) in parts.by_ref().enumerate() {
        if i > 0 {
            out.push('`');
        }
        let words: Vec<&str> = part.split_whitespace().collect();
        match words.split_first() {
            Some((&"rayform", rest)) if i % 2 == 1 && rest.contains(&"STACK") => {
                let filled = rest.iter().map(|w| if *w == "STACK" { &*stack } else { w });
                out.push_str(&rayform(g, filled));
            }
            _ => out.push_str(part),
        }
    }
    out
}

/// `g` for the commands suggested about a state at `location`: with the
/// flags that choose it when the stack's own settings (`stack_default`)
/// would choose another, as for a plan made with `--state` and applied
/// without it.
pub fn at(g: &Global, stack_default: Option<&StateLocation>, location: &StateLocation) -> Global {
    let mut g = g.clone();
    if stack_default.is_none_or(|d| d == location) {
        return g;
    }
    let choosing = ["--state", "--backend", "--state-namespace"];
    let kept: Vec<String> = g
        .given
        .chunks(2)
        .filter(|flag| !choosing.contains(&flag[0].as_str()))
        .flatten()
        .cloned()
        .collect();
    let chosen = match location {
        StateLocation::File { path } => {
            ["--backend", "file", "--state", &path.to_string_lossy()].map(String::from)
        }
        StateLocation::Kubernetes { namespace, .. } => {
            ["--backend", "kubernetes", "--state-namespace", namespace].map(String::from)
        }
    };
    g.given = kept.into_iter().chain(chosen).collect();
    g
}

/// A path as a word of a suggested command.
pub fn path(p: &Path) -> Cow<'_, str> {
    p.to_string_lossy()
}

/// A word a POSIX shell reads back unchanged: as it is when it holds
/// nothing the shell treats specially, else in single quotes.
fn quote(word: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!("'{}'", word.replace('\'', r"'\''")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_a_shell_would_split_or_expand_are_quoted() {
        assert_eq!(quote("stacks/mistral-7b.toml"), "stacks/mistral-7b.toml");
        assert_eq!(quote("my stack.toml"), "'my stack.toml'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$HOME"), "'$HOME'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn the_location_flags_typed_are_repeated() {
        let g = Global {
            kubeconfig: None,
            context: None,
            state: None,
            backend: None,
            state_namespace: None,
            color: super::super::args::ColorWhen::Auto,
            no_color: false,
            verbose: 0,
            given: vec!["--state".into(), "a b.json".into()],
        };
        assert_eq!(
            rayform(&g, ["force-unlock", "s.toml", "abc"]),
            "rayform --state 'a b.json' force-unlock s.toml abc"
        );
    }
}

//! A line diff of two texts, for the review step before a change is saved: the common
//! head and tail are kept, and the middle is diffed by longest common subsequence.

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    Same(&'a str),
    Removed(&'a str),
    Added(&'a str),
}

impl Line<'_> {
    pub fn changed(&self) -> bool {
        !matches!(self, Line::Same(_))
    }
}

/// Largest middle (old lines × new lines) diffed line by line; a larger one is shown as
/// removed whole and added whole, which is still a true diff.
const MAX_CELLS: usize = 1_000_000;

/// The lines of `old` and `new`, in order, each kept, removed or added.
pub fn lines<'a>(old: &'a str, new: &'a str) -> Vec<Line<'a>> {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let head = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let tail = a[head..].iter().rev().zip(b[head..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (ma, mb) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    let mut out: Vec<Line<'a>> = a[..head].iter().map(|l| Line::Same(l)).collect();
    if ma.len().saturating_mul(mb.len()) > MAX_CELLS {
        out.extend(ma.iter().map(|l| Line::Removed(l)));
        out.extend(mb.iter().map(|l| Line::Added(l)));
    } else {
        out.extend(middle(ma, mb));
    }
    out.extend(a[a.len() - tail..].iter().map(|l| Line::Same(l)));
    out
}

/// The diff of `a` and `b` from the table of their suffixes' longest common subsequences.
fn middle<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<Line<'a>> {
    let w = b.len() + 1;
    let mut lcs = vec![0u32; (a.len() + 1) * w];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i * w + j] = if a[i] == b[j] {
                lcs[(i + 1) * w + j + 1] + 1
            } else {
                lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::with_capacity(a.len() + b.len()));
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            out.push(Line::Same(a[i]));
            (i, j) = (i + 1, j + 1);
        } else if lcs[(i + 1) * w + j] >= lcs[i * w + j + 1] {
            out.push(Line::Removed(a[i]));
            i += 1;
        } else {
            out.push(Line::Added(b[j]));
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|l| Line::Removed(l)));
    out.extend(b[j..].iter().map(|l| Line::Added(l)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_lines_are_removed_and_added_and_the_rest_kept() {
        let old = "a: 1\nweight: 75\nb: 2\n";
        let new = "a: 1\nweight: 60\nb: 2\nc: 3\n";
        assert_eq!(
            lines(old, new),
            [
                Line::Same("a: 1"),
                Line::Removed("weight: 75"),
                Line::Added("weight: 60"),
                Line::Same("b: 2"),
                Line::Added("c: 3"),
            ]
        );
    }

    #[test]
    fn repeated_lines_and_empty_texts() {
        assert_eq!(lines("", "x\nx\n"), [Line::Added("x"), Line::Added("x")]);
        assert_eq!(lines("x\n", ""), [Line::Removed("x")]);
        assert!(lines("same\nsame\n", "same\nsame\n").iter().all(|l| !l.changed()));
        // Past the bound, the middle is replaced whole.
        let old: String = (0..1001).map(|i| format!("a{i}\n")).collect();
        let new: String = (0..1001).map(|i| format!("b{i}\n")).collect();
        let d = lines(&old, &new);
        assert_eq!(d.len(), 2002);
        assert!(matches!(d[0], Line::Removed("a0")) && matches!(d[1001], Line::Added("b0")));
    }
}

//! An upper bound of the size of the program RE2 compiles a regular expression into.
//!
//! Envoy compiles every `safe_regex` with RE2 and refuses the whole resource when the
//! program has more than `re2.max_program_size.error_level` instructions (100 by default),
//! so a route the API accepted could break every sidecar of the mesh. RE2 is C++; this
//! counts instructions the way RE2's compiler emits them, never fewer (it shares no
//! suffixes, and adds a margin per repetition), so a regex within the bound here is within
//! it in RE2. `re2_size_tests` compares it with RE2's own `ProgramSize()`.
//!
//! RE2's dialect differs from the `regex` crate's in one way that matters for size: `\d`,
//! `\s` and `\w` are ASCII classes in RE2 and Unicode classes here, so they are rewritten
//! to their ASCII forms before counting.

use regex_syntax::ast::{self, Ast, ClassAscii, ClassAsciiKind, ClassPerl, ClassPerlKind, ClassSetItem};
use regex_syntax::hir::{Class, Hir, HirKind};
use regex_syntax::utf8::Utf8Sequences;

/// Instructions every program has besides the expression's own: the failure instruction,
/// the match instruction, and the unanchored `.*?` prefix (a loop of two plus a no-op).
const OVERHEAD: usize = 5;
/// What RE2 emits for the whole range U+0080–U+10FFFF (it permits overlong encodings there
/// to keep `.` and negated classes small): three lead bytes, three continuation bytes, two
/// alternations.
const NON_ASCII_ALL: usize = 8;

/// The estimated RE2 program size of `re`, or `None` when `re` does not parse. The caller
/// checks syntax with the `regex` crate first; this only counts.
///
/// It counts on the syntax tree, not on the `regex` crate's HIR: the HIR drops repetitions
/// of empty-width parts (`(^){9}`), which RE2 still compiles.
pub fn re2_program_size(re: &str) -> Option<usize> {
    let ast = ast::parse::ParserBuilder::new().nest_limit(32).build().parse(re).ok()?;
    let mut fold = false;
    Some(OVERHEAD.saturating_add(ast_size(re, &ast, &mut fold)?))
}

/// `fold` is the case-insensitive flag in force, which `(?i)` changes for the rest of its group.
fn ast_size(re: &str, ast: &Ast, fold: &mut bool) -> Option<usize> {
    Some(match ast {
        // A no-op.
        Ast::Empty(_) => 1,
        Ast::Flags(f) => {
            apply_flags(&f.flags, fold);
            0
        }
        // One byte-range instruction per UTF-8 byte; a folded letter is the class of its cases.
        Ast::Literal(l) => {
            if !*fold || !l.c.is_alphabetic() {
                l.c.len_utf8()
            } else {
                leaf_size(&format!("(?i){}", l.c))?
            }
        }
        // Any character but `\n`, or any character: two ASCII ranges and RE2's compact
        // U+0080–U+10FFFF, with alternations.
        Ast::Dot(_) => 2 + NON_ASCII_ALL + 2,
        // An empty-width instruction.
        Ast::Assertion(_) => 1,
        Ast::ClassUnicode(_) | Ast::ClassPerl(_) | Ast::ClassBracketed(_) => {
            let text = &re[ast.span().start.offset..ast.span().end.offset];
            leaf_size(&if *fold { format!("(?i){text}") } else { text.to_owned() })?
        }
        // RE2 expands x{n,m} into m copies of x, the last m-n of them optional, and x{n,}
        // into n copies, the last one looping. Each copy is counted with two instructions
        // of margin (a loop or an optional part is one alternation, and a loop over
        // something that can match empty needs one more).
        Ast::Repetition(r) => {
            use ast::{RepetitionKind, RepetitionRange};
            let copies = match &r.op.kind {
                RepetitionKind::ZeroOrOne | RepetitionKind::ZeroOrMore | RepetitionKind::OneOrMore => 1,
                RepetitionKind::Range(RepetitionRange::Exactly(n) | RepetitionRange::AtLeast(n)) => *n,
                RepetitionKind::Range(RepetitionRange::Bounded(_, m)) => *m,
            };
            let sub = ast_size(re, &r.ast, &mut fold.clone())?;
            (copies.max(1) as usize).saturating_mul(sub.saturating_add(2)).saturating_add(2)
        }
        Ast::Group(g) => {
            let mut inner = *fold;
            let capture = match &g.kind {
                ast::GroupKind::NonCapturing(flags) => {
                    apply_flags(flags, &mut inner);
                    0
                }
                // Two capture instructions around the group.
                _ => 2,
            };
            ast_size(re, &g.ast, &mut inner)?.saturating_add(capture)
        }
        Ast::Alternation(a) => {
            let mut sum = a.asts.len().saturating_sub(1);
            for alt in &a.asts {
                // Flags set in one branch hold for the branches after it.
                sum = sum.saturating_add(ast_size(re, alt, fold)?);
            }
            sum
        }
        Ast::Concat(c) => {
            let mut sum = 0usize;
            for part in &c.asts {
                sum = sum.saturating_add(ast_size(re, part, fold)?);
            }
            sum
        }
    })
}

fn apply_flags(flags: &ast::Flags, fold: &mut bool) {
    let mut negate = false;
    for item in &flags.items {
        match item.kind {
            ast::FlagsItemKind::Negation => negate = true,
            ast::FlagsItemKind::Flag(ast::Flag::CaseInsensitive) => *fold = !negate,
            ast::FlagsItemKind::Flag(_) => {}
        }
    }
}

/// The size of one class (or case-folded literal) standing alone.
fn leaf_size(text: &str) -> Option<usize> {
    let mut ast = ast::parse::ParserBuilder::new().nest_limit(32).build().parse(text).ok()?;
    ascii_perl_classes(&mut ast);
    let hir = regex_syntax::hir::translate::TranslatorBuilder::new()
        .unicode(true)
        .build()
        .translate(text, &ast)
        .ok()?;
    Some(hir_size(&hir))
}
/// A class: one instruction per ASCII range, RE2's compact form for all of U+0080–U+10FFFF,
/// otherwise one instruction per byte of each UTF-8 sequence the rest encodes to (RE2 shares
/// common suffixes, so it emits no more), and an alternation between every two pieces.
fn class_size(class: &Class) -> usize {
    let ranges: Vec<(u32, u32)> = match class {
        Class::Unicode(u) => u.iter().map(|r| (u32::from(r.start()), u32::from(r.end()))).collect(),
        Class::Bytes(b) => b.iter().map(|r| (u32::from(r.start()), u32::from(r.end()))).collect(),
    };
    if let [(a, b), (c, d)] = ranges.as_slice()
        && a == b
        && c == d
        && a.abs_diff(*c) == 0x20
        && char::from_u32(*a).is_some_and(|ch| ch.is_ascii_alphabetic())
    {
        // `(?i)a`: one instruction with the case-folding flag.
        return 1;
    }
    let mut pieces = 0usize;
    let mut insts = 0usize;
    let mut non_ascii: Vec<(char, char)> = Vec::new();
    for &(start, end) in &ranges {
        if start < 0x80 {
            pieces += 1;
            insts += 1;
        }
        if end >= 0x80 {
            let from = char::from_u32(start.max(0x80)).unwrap_or('\u{80}');
            let to = char::from_u32(end).unwrap_or(char::MAX);
            non_ascii.push((from, to));
        }
    }
    let covers_all = {
        // Every scalar value from U+0080 on, the surrogate gap aside.
        let mut next = 0x80u32;
        for &(from, to) in &non_ascii {
            if u32::from(from) > next && !(next == 0xD800 && u32::from(from) == 0xE000) {
                break;
            }
            next = next.max(u32::from(to) + 1);
        }
        next > 0x10FFFF
    };
    if covers_all {
        pieces += 1;
        insts += NON_ASCII_ALL;
    } else {
        for (from, to) in non_ascii {
            for seq in Utf8Sequences::new(from, to) {
                pieces += 1;
                insts += seq.as_slice().len();
            }
        }
    }
    insts + pieces.saturating_sub(1)
}

/// Rewrites `\d`, `\s`, `\w` (and their negations), alone or inside brackets, to the ASCII
/// classes RE2 means by them. `[[:space:]]` adds `\v` to RE2's `\s`: one more, never fewer.
fn ascii_perl_classes(ast: &mut Ast) {
    fn ascii(p: &ClassPerl) -> ClassAscii {
        let kind = match p.kind {
            ClassPerlKind::Digit => ClassAsciiKind::Digit,
            ClassPerlKind::Space => ClassAsciiKind::Space,
            ClassPerlKind::Word => ClassAsciiKind::Word,
        };
        ClassAscii { span: p.span, kind, negated: p.negated }
    }
    fn set_item(item: &mut ClassSetItem) {
        match item {
            ClassSetItem::Perl(p) => *item = ClassSetItem::Ascii(ascii(p)),
            ClassSetItem::Bracketed(b) => set(&mut b.kind),
            ClassSetItem::Union(u) => u.items.iter_mut().for_each(set_item),
            _ => {}
        }
    }
    fn set(s: &mut ast::ClassSet) {
        match s {
            ast::ClassSet::Item(i) => set_item(i),
            ast::ClassSet::BinaryOp(op) => {
                set(&mut op.lhs);
                set(&mut op.rhs);
            }
        }
    }
    match ast {
        Ast::ClassPerl(p) => {
            let span = p.span;
            let item = ClassSetItem::Ascii(ascii(p));
            *ast = Ast::class_bracketed(ast::ClassBracketed {
                span,
                negated: false,
                kind: ast::ClassSet::Item(item),
            });
        }
        Ast::ClassBracketed(b) => set(&mut b.kind),
        Ast::Repetition(r) => ascii_perl_classes(&mut r.ast),
        Ast::Group(g) => ascii_perl_classes(&mut g.ast),
        Ast::Alternation(a) => a.asts.iter_mut().for_each(ascii_perl_classes),
        Ast::Concat(c) => c.asts.iter_mut().for_each(ascii_perl_classes),
        _ => {}
    }
}

/// The size of a translated leaf: a class, or a case-folded literal.
fn hir_size(hir: &Hir) -> usize {
    match hir.kind() {
        HirKind::Empty => 1,
        HirKind::Literal(l) => l.0.len(),
        HirKind::Class(c) => class_size(c),
        HirKind::Look(_) => 1,
        HirKind::Capture(c) => hir_size(&c.sub) + 2,
        HirKind::Concat(parts) => parts.iter().map(hir_size).sum(),
        HirKind::Alternation(alts) => alts.iter().map(hir_size).sum::<usize>() + alts.len() - 1,
        HirKind::Repetition(r) => {
            let copies = r.max.unwrap_or(r.min).max(1) as usize;
            copies.saturating_mul(hir_size(&r.sub).saturating_add(2)).saturating_add(2)
        }
    }
}

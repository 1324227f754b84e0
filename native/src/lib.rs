//! exnet's compiled accepting path for the event contracts.
//!
//! A [`Model`] is built (in Python, by `exnet.contracts.native`) from a frozen
//! pydantic model's core schema. Its `accept` reads a message's JSON bytes and
//! returns the model instance that pydantic would have built, or `None` when
//! it cannot vouch for the message; the caller then asks pydantic, which stays
//! the reference for every rejection and every case this path declines.
//!
//! So this path may only ever *decline* too much, never accept too much: any
//! doubt (an unknown or repeated key, an escape in a string, a nested value, a
//! number out of i64, a value out of range, a date that does not exist, a rule
//! that does not hold, a parse error) returns `None`.
//!
//! A [`Router`] is what the stream workers call per message: the topic's model,
//! then Python's steps (`fallback`) for whatever it does not accept.

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{
    PyBytes, PyDateAccess, PyDateTime, PyDict, PyFrozenSet, PySet, PyString, PyTimeAccess, PyTuple,
    PyType, PyTzInfo, PyTzInfoAccess,
};
use pyo3::{PyTraverseError, PyVisit};
use regex::Regex;
use std::collections::HashMap;
use std::sync::Mutex;

/// One step of a [`Matcher::Run`]: between `min` and `max` bytes of its class.
struct Step {
    /// `class[b]`: byte `b` belongs to the step's class (ASCII bytes only).
    class: [bool; 256],
    min: usize,
    max: usize,
}

impl Step {
    fn new(set: u128, min: usize, max: usize) -> Self {
        let mut class = [false; 256];
        for (byte, member) in class.iter_mut().enumerate().take(128) {
            *member = set & (1u128 << byte) != 0;
        }
        Step { class, min, max }
    }

    fn set(&self) -> u128 {
        (0..128)
            .filter(|&byte| self.class[byte])
            .fold(0, |set, byte| set | 1u128 << byte)
    }
}

/// A string pattern, as pydantic-core's regex engine would match it.
enum Matcher {
    /// `^` a sequence of ASCII classes (or literal bytes), each repeated a
    /// counted number of times, `$`; and where a step's count may vary, its
    /// class is disjoint from whatever can follow it, so taking as many bytes
    /// as the step allows is the only way to match (no backtracking). Most
    /// identifier patterns have this form.
    Run(Vec<Step>),
    Regex(Regex),
}

impl Matcher {
    fn new(pattern: &str) -> PyResult<Self> {
        let regex = regex(pattern)?;
        // The same parser as the regex crate's, with the same defaults.
        let hir = regex_syntax::parse(pattern)
            .map_err(|error| PyValueError::new_err(error.to_string()))?;
        Ok(match run_steps(&hir) {
            Some(steps) => Matcher::Run(steps),
            None => Matcher::Regex(regex),
        })
    }

    fn is_match(&self, text: &str) -> bool {
        let steps = match self {
            Matcher::Run(steps) => steps,
            Matcher::Regex(regex) => return regex.is_match(text),
        };
        let mut rest = text.as_bytes();
        for step in steps {
            let most = rest.len().min(step.max);
            let taken = rest[..most]
                .iter()
                .position(|&byte| !step.class[usize::from(byte)])
                .unwrap_or(most);
            if taken < step.min {
                return false;
            }
            rest = &rest[taken..];
        }
        rest.is_empty()
    }
}

/// The steps of a pattern of [`Matcher::Run`]'s form, or `None`.
fn run_steps(hir: &regex_syntax::hir::Hir) -> Option<Vec<Step>> {
    use regex_syntax::hir::{HirKind, Look};
    let HirKind::Concat(parts) = hir.kind() else {
        return None;
    };
    let (first, rest) = parts.split_first()?;
    let (last, middle) = rest.split_last()?;
    if *first.kind() != HirKind::Look(Look::Start) || *last.kind() != HirKind::Look(Look::End) {
        return None;
    }
    let mut steps = Vec::new();
    for part in middle {
        match part.kind() {
            HirKind::Literal(literal) => {
                for &byte in literal.0.iter() {
                    steps.push(Step::new(ascii_set(&[(byte, byte)])?, 1, 1));
                }
            }
            HirKind::Class(_) => steps.push(Step::new(class_set(part)?, 1, 1)),
            HirKind::Repetition(repetition) => steps.push(Step::new(
                class_set(&repetition.sub)?,
                usize::try_from(repetition.min).ok()?,
                match repetition.max {
                    Some(max) => usize::try_from(max).ok()?,
                    None => usize::MAX,
                },
            )),
            _ => return None,
        }
    }
    // Where a step's count varies, nothing it takes may start what follows.
    for (index, step) in steps.iter().enumerate() {
        if step.min == step.max {
            continue;
        }
        let mut follows = 0u128;
        for next in &steps[index + 1..] {
            follows |= next.set();
            if next.min > 0 {
                break;
            }
        }
        if step.set() & follows != 0 {
            return None;
        }
    }
    Some(steps)
}

/// The ASCII bytes of a one-character class (or of one literal byte).
fn class_set(hir: &regex_syntax::hir::Hir) -> Option<u128> {
    use regex_syntax::hir::{Class, HirKind};
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => {
            let ranges: Vec<(u8, u8)> = class
                .ranges()
                .iter()
                .map(|range| {
                    Some((
                        u8::try_from(range.start()).ok()?,
                        u8::try_from(range.end()).ok()?,
                    ))
                })
                .collect::<Option<_>>()?;
            ascii_set(&ranges)
        }
        HirKind::Class(Class::Bytes(class)) => ascii_set(
            &class
                .ranges()
                .iter()
                .map(|range| (range.start(), range.end()))
                .collect::<Vec<_>>(),
        ),
        HirKind::Literal(literal) if literal.0.len() == 1 => {
            ascii_set(&[(literal.0[0], literal.0[0])])
        }
        _ => None,
    }
}

/// The set of these byte ranges, when all of them are ASCII.
fn ascii_set(ranges: &[(u8, u8)]) -> Option<u128> {
    let mut set = 0u128;
    for &(start, end) in ranges {
        if end >= 128 {
            return None;
        }
        for byte in start..=end {
            set |= 1u128 << byte;
        }
    }
    Some(set)
}

/// A field pattern as the compiled path matches it, for the tests to hold
/// against the regex crate (pydantic-core's engine).
#[pyclass(module = "exnet_native", frozen)]
struct Pattern {
    matcher: Matcher,
    regex: Regex,
}

#[pymethods]
impl Pattern {
    #[new]
    fn new(pattern: &str) -> PyResult<Self> {
        Ok(Pattern {
            matcher: Matcher::new(pattern)?,
            regex: regex(pattern)?,
        })
    }

    /// `"run"` or `"regex"`: how the compiled path matches this pattern.
    #[getter]
    fn kind(&self) -> &'static str {
        match self.matcher {
            Matcher::Run(_) => "run",
            Matcher::Regex(_) => "regex",
        }
    }

    /// Whether the compiled path finds `text` in the pattern's language.
    fn is_match(&self, text: &str) -> bool {
        self.matcher.is_match(text)
    }

    /// The regex crate's own answer.
    fn regex_is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

/// How one field's JSON value is read.
enum Kind {
    Str {
        pattern: Option<Matcher>,
        min_length: Option<usize>,
        max_length: Option<usize>,
        to_lower: bool,
    },
    /// One of these strings; the value is the schema's own object for it.
    Literal(Vec<(String, Py<PyAny>)>),
    Int {
        ge: Option<i64>,
        le: Option<i64>,
    },
    Float {
        ge: Option<f64>,
        le: Option<f64>,
    },
    Bool,
    /// An ISO-8601 time with a UTC offset in `pattern`'s form, converted to UTC.
    UtcTimestamp {
        pattern: Matcher,
    },
}

struct Field {
    /// The Python attribute name (key of `__dict__` and of `__pydantic_fields_set__`).
    name: Py<PyString>,
    /// The JSON key.
    alias: String,
    kind: Kind,
    nullable: bool,
    /// `None`: required.
    default: Option<Py<PyAny>>,
}

/// One rule that spans fields (the model's `RULES`, see `exnet.contracts.envelope`),
/// over the instance's `__dict__`.
enum Rule {
    /// `required`: `field` is set when `when` equals `value` (`RequiredWhen`);
    /// else `field` is None unless `when` equals `value` (`NullUnless`).
    OnValue {
        field: Py<PyString>,
        when: Py<PyString>,
        value: Py<PyAny>,
        required: bool,
    },
    /// `at_most`: `field` is at most `table[by]` (`AtMostPer`); else `field`
    /// is in `table[by]` (`OneOfPer`).
    PerKey {
        field: Py<PyString>,
        by: Py<PyString>,
        table: Py<PyAny>,
        at_most: bool,
    },
}

impl Rule {
    /// Whether the rule holds, as the Python `holds` answers; `None` (decline)
    /// on anything unexpected, such as a key the table lacks.
    fn holds(&self, fields: &Bound<'_, PyDict>) -> Option<bool> {
        let py = fields.py();
        let get = |name: &Py<PyString>| fields.get_item(name.bind(py)).ok().flatten();
        match self {
            Rule::OnValue {
                field,
                when,
                value,
                required,
            } => {
                // RequiredWhen holds where `when` differs or `field` is set;
                // NullUnless where `when` matches or `field` is None. The field
                // is read only when the comparison leaves it to decide.
                let matches = get(when)?.eq(value.bind(py)).ok()?;
                Some(matches != *required || get(field)?.is_none() != *required)
            }
            Rule::PerKey {
                field,
                by,
                table,
                at_most,
            } => {
                let entry = table.bind(py).get_item(get(by)?).ok()?;
                if *at_most {
                    get(field)?.le(entry).ok()
                } else {
                    entry.contains(get(field)?).ok()
                }
            }
        }
    }
}

/// The accepting path for one model.
#[pyclass(module = "exnet_native", frozen)]
struct Model {
    cls: Py<PyType>,
    fields: Vec<Field>,
    /// The model's rules that span fields, checked before it is built.
    rules: Vec<Rule>,
    /// The model's other after-validators, applied in order to the new instance.
    after: Vec<Py<PyAny>>,
    /// Every field by name, in declaration order, with its default (None when
    /// required): copied for each message, then the values read replace them.
    template: Py<PyDict>,
    /// The bits of the required fields.
    required: u64,
    /// Field names present -> `__pydantic_fields_set__`'s content (a few masks recur).
    fields_sets: Mutex<Vec<(u64, Py<PyFrozenSet>)>>,
    /// The checks after the fields', for `accept_message`.
    checks: Option<Checks>,
}

/// What `accept_message` checks after the fields, and how it answers.
struct Checks {
    /// Messages larger than this are left to pydantic's side (`too_large`).
    max_bytes: usize,
    /// How far `occurred_at` may lie ahead of processing time.
    tolerance_us: i64,
    /// site_id -> node_id; `None`: no registry, no check.
    node_of_site: Option<HashMap<String, String>>,
    /// The participant, site and node id fields (indices into the fields).
    ids: [usize; 3],
    /// `Accepted` and its `topic`: what `accept_message` returns.
    accepted: Py<PyType>,
    topic: Py<PyAny>,
}

impl Checks {
    /// Whether a message whose event reads as `read` passes the checks after the
    /// fields' (SPEC §2): its key is its participant_id, its site belongs to its
    /// node in the registry, it is not from the future.
    fn passes(&self, read: &Read<'_, '_>, key: &[u8], now_us: i64) -> Option<bool> {
        let [participant, site, node] = read.ids;
        if participant?.as_bytes() != key {
            return Some(false);
        }
        if let Some(node_of_site) = &self.node_of_site {
            if node_of_site.get(site?).map(String::as_str) != Some(node?) {
                return Some(false);
            }
        }
        Some(read.instant? <= now_us + self.tolerance_us)
    }
}

/// What [`Model::read`] found in a message.
struct Read<'py, 'a> {
    dict: Bound<'py, PyDict>,
    present: u64,
    /// `occurred_at` in microseconds since the epoch (UTC).
    instant: Option<i64>,
    /// The participant, site and node ids as read (for the checks).
    ids: [Option<&'a str>; 3],
}

/// What became of a message on the compiled path.
enum Attempt {
    /// Every check passed: `Accepted(event, topic, origin)`.
    Accepted(Py<PyAny>),
    /// The event (the very instance pydantic would build), but a later check
    /// (key, site or time) failed or could not be made here.
    Built(Py<PyAny>),
    /// Left to pydantic: the fields could not be vouched for.
    Declined,
}

/// Microseconds since the epoch of an aware `datetime` in UTC (`datetime.UTC`);
/// `None` for any other: the caller then leaves the message to pydantic's side.
fn utc_micros(now: &Bound<'_, PyAny>) -> Option<i64> {
    let now = now.cast::<PyDateTime>().ok()?;
    let utc = PyTzInfo::utc(now.py()).ok()?;
    if !now.get_tzinfo()?.is(&*utc) {
        return None;
    }
    let days = days_from_civil(
        i64::from(now.get_year()),
        i64::from(now.get_month()),
        i64::from(now.get_day()),
    );
    let seconds = days * 86_400
        + i64::from(now.get_hour()) * 3600
        + i64::from(now.get_minute()) * 60
        + i64::from(now.get_second());
    Some(seconds * 1_000_000 + i64::from(now.get_microsecond()))
}

/// A field's parsed value, or `None` to decline the message.
type Parsed = Option<Py<PyAny>>;

/// A reader for the one JSON shape an event has: a flat object of strings,
/// numbers, booleans and nulls. It reads exactly JSON's grammar for those
/// (RFC 8259) and declines the rest: a string with an escape, a nested value,
/// an integer beyond 64 bits. Numbers are parsed by Rust's correctly rounded
/// parser, which gives every valid JSON number the same double as jiter's
/// (pydantic-core's parser): there is only one correctly rounded double.
struct Scanner<'a> {
    data: &'a [u8],
    at: usize,
}

/// A JSON number: an integer (no fraction, no exponent) or a double.
enum Number {
    Int(i64),
    Float(f64),
}

/// The high bit of each of a word's eight bytes (little-endian) that is `"`,
/// `\\`, below 0x20 or above 0x7f. The classic SWAR tests (a byte equal to `b`
/// is a zero byte of `word ^ b*LO`); a borrow can flag a byte above a true
/// hit, never below, so the lowest flag is the first such byte.
fn special_bytes(word: u64) -> u64 {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(LO) & !v & HI;
    (word & HI)
        | (word.wrapping_sub(LO * 0x20) & !word & HI)
        | zero(word ^ (LO * u64::from(b'"')))
        | zero(word ^ (LO * u64::from(b'\\')))
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.data.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, consumed.
    fn next_token(&mut self) -> Option<u8> {
        self.skip_whitespace();
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    /// A string's content, the opening quote already consumed; no escapes.
    fn string(&mut self) -> Option<&'a str> {
        let start = self.at;
        let data = self.data;
        let mut at = start;
        // Eight bytes at a time to the first quote, backslash, control character
        // or non-ASCII byte; from there (or for the last few bytes) byte by byte.
        while let Some(chunk) = data.get(at..at + 8) {
            let special = special_bytes(u64::from_le_bytes(chunk.try_into().ok()?));
            if special != 0 {
                at += (special.trailing_zeros() / 8) as usize;
                break;
            }
            at += 8;
        }
        let mut ascii = true;
        loop {
            match *data.get(at)? {
                b'"' => break,
                // A backslash (an escape: pydantic reads it) or a control character (not JSON).
                b'\\' | 0..=0x1f => return None,
                0x80..=0xff => ascii = false,
                _ => {}
            }
            at += 1;
        }
        let raw = &data[start..at];
        self.at = at + 1;
        if ascii {
            // SAFETY: every byte is ASCII, so the bytes are UTF-8.
            Some(unsafe { std::str::from_utf8_unchecked(raw) })
        } else {
            std::str::from_utf8(raw).ok()
        }
    }

    /// A string value whose first byte, not yet consumed, is `first`.
    fn string_value(&mut self, first: u8) -> Option<&'a str> {
        if first != b'"' {
            return None;
        }
        self.at += 1;
        self.string()
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }

    /// A number, its first byte (`-` or a digit) not yet consumed.
    fn number(&mut self) -> Option<Number> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return None;
            }
            float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
            float = true;
        }
        // ASCII only: digits, '-', '+', '.', 'e' and 'E'.
        let text = std::str::from_utf8(&self.data[start..self.at]).ok()?;
        if float {
            text.parse().ok().map(Number::Float)
        } else {
            text.parse().ok().map(Number::Int) // beyond i64: declined
        }
    }

    fn word(&mut self, word: &[u8]) -> Option<()> {
        if self.data.get(self.at..self.at + word.len())? == word {
            self.at += word.len();
            Some(())
        } else {
            None
        }
    }
}

/// Reads `field`'s value (whitespace before it skipped); a timestamp's instant
/// (microseconds since the Unix epoch, UTC) goes to `instant`.
fn read_value<'a>(
    py: Python<'_>,
    field: &Field,
    scanner: &mut Scanner<'a>,
    instant: &mut Option<i64>,
    text_read: &mut Option<&'a str>,
) -> Parsed {
    scanner.skip_whitespace();
    let first = scanner.peek()?;
    if first == b'n' {
        scanner.word(b"null")?;
        return field.nullable.then(|| py.None());
    }
    match &field.kind {
        Kind::Str {
            pattern,
            min_length,
            max_length,
            to_lower,
        } => {
            let text = scanner.string_value(first)?;
            if min_length.is_some() || max_length.is_some() {
                let length = text.chars().count();
                if min_length.is_some_and(|min| length < min)
                    || max_length.is_some_and(|max| length > max)
                {
                    return None;
                }
            }
            if pattern.as_ref().is_some_and(|p| !p.is_match(text)) {
                return None;
            }
            if *to_lower {
                Some(PyString::new(py, &text.to_lowercase()).into_any().unbind())
            } else {
                *text_read = Some(text); // the value as stored
                Some(PyString::new(py, text).into_any().unbind())
            }
        }
        Kind::Literal(choices) => {
            let text = scanner.string_value(first)?;
            choices
                .iter()
                .find(|(choice, _)| choice == text)
                .map(|(_, value)| value.clone_ref(py))
        }
        Kind::Int { ge, le } => {
            let Number::Int(value) = scanner.number()? else {
                return None;
            };
            if ge.is_some_and(|bound| value < bound) || le.is_some_and(|bound| value > bound) {
                return None;
            }
            Some(value.into_pyobject(py).ok()?.into_any().unbind())
        }
        Kind::Float { ge, le } => {
            let value = match scanner.number()? {
                Number::Float(value) => value,
                Number::Int(value) => value as f64,
            };
            if !value.is_finite()
                || ge.is_some_and(|bound| value < bound)
                || le.is_some_and(|bound| value > bound)
            {
                return None;
            }
            Some(value.into_pyobject(py).ok()?.into_any().unbind())
        }
        Kind::Bool => {
            let value = match first {
                b't' => scanner.word(b"true").map(|()| true)?,
                b'f' => scanner.word(b"false").map(|()| false)?,
                _ => return None,
            };
            Some(value.into_pyobject(py).ok()?.to_owned().into_any().unbind())
        }
        Kind::UtcTimestamp { pattern } => {
            let text = scanner.string_value(first)?;
            if !pattern.is_match(text) {
                return None;
            }
            let (value, micros) = utc_timestamp(py, text)?;
            *instant = Some(micros);
            Some(value)
        }
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits(text: &[u8], start: usize, count: usize) -> Option<i64> {
    let mut value = 0i64;
    for &byte in text.get(start..start + count)? {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(byte - b'0');
    }
    Some(value)
}

/// `datetime.fromisoformat(text).astimezone(UTC)` for a text already in the
/// contract's form (`YYYY-MM-DD[T ]hh:mm[:ss[.f{1,9}]](Z|±hh:mm)`): fractions
/// beyond microseconds are cut, as Python does. `None` for a time that does not
/// exist (pydantic then says why). Also the instant, in microseconds since the epoch.
fn utc_timestamp(py: Python<'_>, text: &str) -> Option<(Py<PyAny>, i64)> {
    let bytes = text.as_bytes();
    let year = digits(bytes, 0, 4)?;
    let month = digits(bytes, 5, 2)?;
    let day = digits(bytes, 8, 2)?;
    let hour = digits(bytes, 11, 2)?;
    let minute = digits(bytes, 14, 2)?;
    let mut position = 16;
    let mut second = 0;
    let mut microsecond = 0i64;
    if bytes.get(position) == Some(&b':') {
        second = digits(bytes, position + 1, 2)?;
        position += 3;
        if bytes.get(position) == Some(&b'.') {
            position += 1;
            let mut scale = 100_000;
            while let Some(byte) = bytes.get(position).filter(|b| b.is_ascii_digit()) {
                microsecond += i64::from(byte - b'0') * scale;
                scale /= 10;
                position += 1;
            }
        }
    }
    let offset_minutes = match bytes.get(position)? {
        b'Z' => 0,
        sign @ (b'+' | b'-') => {
            let minutes = digits(bytes, position + 1, 2)? * 60 + digits(bytes, position + 4, 2)?;
            if *sign == b'-' {
                -minutes
            } else {
                minutes
            }
        }
        _ => return None,
    };
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let local = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let utc = local - offset_minutes * 60;
    let (year, month, day) = civil_from_days(utc.div_euclid(86_400));
    let time = utc.rem_euclid(86_400);
    let tz = PyTzInfo::utc(py).ok()?;
    let value = PyDateTime::new(
        py,
        i32::try_from(year).ok()?,
        u8::try_from(month).ok()?,
        u8::try_from(day).ok()?,
        u8::try_from(time / 3600).ok()?,
        u8::try_from(time / 60 % 60).ok()?,
        u8::try_from(time % 60).ok()?,
        u32::try_from(microsecond).ok()?,
        Some(&tz),
    )
    .ok()?;
    Some((value.into_any().unbind(), utc * 1_000_000 + microsecond))
}

/// `cls.__new__(cls)` for a class whose `__new__` is `object.__new__`: an
/// instance with nothing set, without running `__init__`.
fn new_object<'py>(cls: &Bound<'py, PyType>) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    let empty = PyTuple::empty(py);
    let new = unsafe { (*cls.as_type_ptr()).tp_new }
        .ok_or_else(|| PyValueError::new_err("a type without tp_new"))?;
    // SAFETY: `cls` is a live type object and `empty` a tuple; tp_new returns a
    // new reference or NULL with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            new(cls.as_type_ptr(), empty.as_ptr(), std::ptr::null_mut()),
        )
    }
}

/// `object.__setattr__`: a frozen model's own `__setattr__` refuses.
fn force_setattr(
    object: &Bound<'_, PyAny>,
    name: &Bound<'_, PyString>,
    value: &Bound<'_, PyAny>,
) -> PyResult<()> {
    // SAFETY: all three pointers are live objects held by the caller.
    let status =
        unsafe { ffi::PyObject_GenericSetAttr(object.as_ptr(), name.as_ptr(), value.as_ptr()) };
    if status == 0 {
        Ok(())
    } else {
        Err(PyErr::fetch(object.py()))
    }
}

/// At most this many fields per model (the presence of each is one bit).
const MAX_FIELDS: usize = 64;

impl Model {
    /// The index of the field read from JSON key `key`; `hint` is tried first
    /// (keys usually come in declaration order).
    fn index_of(&self, key: &[u8], hint: usize) -> Option<usize> {
        if self
            .fields
            .get(hint)
            .is_some_and(|field| field.alias.as_bytes() == key)
        {
            return Some(hint);
        }
        self.fields
            .iter()
            .position(|field| field.alias.as_bytes() == key)
    }

    /// [`Model::accept_message`]'s work, saying also whether the event was built.
    fn attempt(
        &self,
        py: Python<'_>,
        value: Option<&[u8]>,
        key: Option<&[u8]>,
        origin: &Bound<'_, PyAny>,
        now: &Bound<'_, PyAny>,
    ) -> Attempt {
        let Some(checks) = self.checks.as_ref() else {
            return Attempt::Declined;
        };
        let Some(value) = value.filter(|value| value.len() <= checks.max_bytes) else {
            return Attempt::Declined;
        };
        let Some(read) = self.read(py, value) else {
            return Attempt::Declined;
        };
        // No key, or a processing time not in UTC: the Python steps check.
        let passes = key
            .zip(utc_micros(now))
            .and_then(|(key, now_us)| checks.passes(&read, key, now_us));
        // The fields read and the rules hold (or the build fails and pydantic
        // says why): a failed check is then named by the Python steps, which
        // take this very instance rather than reading the message again.
        let Ok(event) = self.build(py, read) else {
            return Attempt::Declined;
        };
        if passes != Some(true) {
            return Attempt::Built(event);
        }
        match new_accepted(py, checks, event, origin) {
            Ok(accepted) => Attempt::Accepted(accepted),
            Err(_) => Attempt::Declined,
        }
    }

    /// The instance's `__dict__` (declaration order, defaults filled), the fields
    /// present (as bits) and the timestamp's instant; `None` to decline.
    fn read<'py, 'a>(&self, py: Python<'py>, data: &'a [u8]) -> Option<Read<'py, 'a>> {
        let dict = self.template.bind(py).copy().ok()?;
        let mut scanner = Scanner { data, at: 0 };
        let mut present = 0u64;
        let mut instant = None;
        let mut ids = [None; 3];
        let id_fields = self.checks.as_ref().map(|checks| checks.ids);
        if scanner.next_token()? != b'{' {
            return None;
        }
        // An empty object has no required field: declined below.
        if scanner.next_token()? != b'}' {
            scanner.at -= 1;
            let mut hint = 0;
            loop {
                if scanner.next_token()? != b'"' {
                    return None; // not a key (a trailing comma, say)
                }
                // A key written with escapes matches no field and is declined.
                let index = self.index_of(scanner.string()?.as_bytes(), hint)?;
                let bit = 1u64 << index;
                if present & bit != 0 {
                    return None; // a repeated key: pydantic decides which copy counts
                }
                present |= bit;
                if scanner.next_token()? != b':' {
                    return None;
                }
                let field = &self.fields[index];
                let mut text = None;
                let value = read_value(py, field, &mut scanner, &mut instant, &mut text)?;
                dict.set_item(field.name.bind(py), value).ok()?;
                if let Some(slot) = id_fields.and_then(|f| f.iter().position(|&i| i == index)) {
                    ids[slot] = text;
                }
                hint = index + 1;
                match scanner.next_token()? {
                    b',' => {}
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        scanner.skip_whitespace();
        if scanner.at != data.len() {
            return None; // anything after the object
        }
        if present & self.required != self.required {
            return None;
        }
        Some(Read {
            dict,
            present,
            instant,
            ids,
        })
    }

    /// A new `__pydantic_fields_set__` for the fields present.
    fn fields_set<'py>(&self, py: Python<'py>, present: u64) -> PyResult<Bound<'py, PySet>> {
        let mut cache = self
            .fields_sets
            .lock()
            .map_err(|_| PyValueError::new_err("poisoned"))?;
        let names = match cache.iter().find(|(mask, _)| *mask == present) {
            Some((_, names)) => names.bind(py).clone(),
            None => {
                let names = PyFrozenSet::new(
                    py,
                    self.fields
                        .iter()
                        .enumerate()
                        .filter(|(index, _)| present & (1u64 << index) != 0)
                        .map(|(_, field)| field.name.bind(py)),
                )?;
                cache.push((present, names.clone().unbind()));
                names
            }
        };
        drop(cache);
        // SAFETY: `names` is a live frozenset; PySet_New copies it into a new set.
        unsafe {
            Ok(
                Bound::from_owned_ptr_or_err(py, ffi::PySet_New(names.as_ptr()))?
                    .cast_into_unchecked(),
            )
        }
    }

    fn build(&self, py: Python<'_>, read: Read<'_, '_>) -> PyResult<Py<PyAny>> {
        let Read { dict, present, .. } = read;
        if !self
            .rules
            .iter()
            .all(|rule| rule.holds(&dict) == Some(true))
        {
            // pydantic builds it again and its validator words the problem.
            return Err(PyValueError::new_err("a rule does not hold"));
        }
        let fields_set = self.fields_set(py, present)?;
        // BaseModel defines no __new__ of its own.
        let instance = new_object(self.cls.bind(py))?;
        let none = py.None().into_bound(py);
        force_setattr(&instance, pyo3::intern!(py, "__dict__"), dict.as_any())?;
        force_setattr(&instance, pyo3::intern!(py, "__pydantic_extra__"), &none)?;
        force_setattr(
            &instance,
            pyo3::intern!(py, "__pydantic_fields_set__"),
            fields_set.as_any(),
        )?;
        force_setattr(&instance, pyo3::intern!(py, "__pydantic_private__"), &none)?;
        let mut instance = instance.unbind();
        for validator in &self.after {
            instance = validator.call1(py, (instance,))?;
        }
        Ok(instance)
    }
}

fn optional<'py, T: pyo3::conversion::FromPyObjectOwned<'py>>(
    spec: &Bound<'py, PyDict>,
    key: &str,
) -> PyResult<Option<T>> {
    match spec.get_item(key)? {
        Some(value) if !value.is_none() => Ok(Some(value.extract().map_err(Into::into)?)),
        _ => Ok(None),
    }
}

fn required<'py, T: pyo3::conversion::FromPyObjectOwned<'py>>(
    spec: &Bound<'py, PyDict>,
    key: &str,
) -> PyResult<T> {
    optional(spec, key)?.ok_or_else(|| PyValueError::new_err(format!("field spec lacks {key:?}")))
}

fn regex(pattern: &str) -> PyResult<Regex> {
    Regex::new(pattern).map_err(|error| PyValueError::new_err(error.to_string()))
}

fn field_from_spec(spec: &Bound<'_, PyDict>) -> PyResult<Field> {
    let kind_name: String = required(spec, "kind")?;
    let kind = match kind_name.as_str() {
        "str" => Kind::Str {
            pattern: optional::<String>(spec, "pattern")?
                .map(|p| Matcher::new(&p))
                .transpose()?,
            min_length: optional(spec, "min_length")?,
            max_length: optional(spec, "max_length")?,
            to_lower: optional(spec, "to_lower")?.unwrap_or(false),
        },
        "literal" => {
            let values: Vec<Bound<'_, PyAny>> = required(spec, "expected")?;
            let mut choices = Vec::with_capacity(values.len());
            for value in values {
                choices.push((value.extract::<String>()?, value.unbind()));
            }
            Kind::Literal(choices)
        }
        "int" => Kind::Int {
            ge: optional(spec, "ge")?,
            le: optional(spec, "le")?,
        },
        "float" => Kind::Float {
            ge: optional(spec, "ge")?,
            le: optional(spec, "le")?,
        },
        "bool" => Kind::Bool,
        "utc_timestamp" => Kind::UtcTimestamp {
            pattern: Matcher::new(&required::<String>(spec, "pattern")?)?,
        },
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown field kind {other:?}"
            )))
        }
    };
    let default = spec.get_item("default")?.map(Bound::unbind);
    Ok(Field {
        name: required::<Bound<'_, PyString>>(spec, "name")?.unbind(),
        alias: required(spec, "alias")?,
        kind,
        nullable: optional(spec, "nullable")?.unwrap_or(false),
        default,
    })
}

fn rule_from_spec(spec: &Bound<'_, PyDict>, fields: &[Field]) -> PyResult<Rule> {
    let name = |key: &str| -> PyResult<Py<PyString>> {
        let name: String = required(spec, key)?;
        fields
            .iter()
            .find(|field| field.name.bind(spec.py()).to_str().ok() == Some(name.as_str()))
            .map(|field| field.name.clone_ref(spec.py()))
            .ok_or_else(|| PyValueError::new_err(format!("rule {key}: no field {name}")))
    };
    let kind: String = required(spec, "kind")?;
    Ok(match kind.as_str() {
        "required_when" | "null_unless" => Rule::OnValue {
            field: name("field")?,
            when: name("when")?,
            value: required(spec, "value")?,
            required: kind == "required_when",
        },
        "one_of_per" | "at_most_per" => Rule::PerKey {
            field: name("field")?,
            by: name("by")?,
            table: required(spec, "table")?,
            at_most: kind == "at_most_per",
        },
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown rule kind {other:?}"
            )))
        }
    })
}

fn checks_from_spec(spec: &Bound<'_, PyDict>, fields: &[Field]) -> PyResult<Checks> {
    let node_of_site = match spec.get_item("node_of_site")? {
        Some(map) if !map.is_none() => Some(map.extract::<HashMap<String, String>>()?),
        _ => None,
    };
    let index = |key: &str| -> PyResult<usize> {
        let name: String = required(spec, key)?;
        fields
            .iter()
            .position(|field| {
                matches!(field.kind, Kind::Str { .. }) && field.name.to_string() == name
            })
            .ok_or_else(|| PyValueError::new_err(format!("{key}: no string field {name:?}")))
    };
    Ok(Checks {
        max_bytes: required(spec, "max_bytes")?,
        tolerance_us: required(spec, "tolerance_us")?,
        node_of_site,
        ids: [index("participant")?, index("site")?, index("node")?],
        accepted: required::<Bound<'_, PyType>>(spec, "accepted")?.unbind(),
        topic: required::<Bound<'_, PyAny>>(spec, "topic")?.unbind(),
    })
}

/// `Accepted(event, topic, origin)`, its slots set directly (it has no validation).
fn new_accepted(
    py: Python<'_>,
    checks: &Checks,
    event: Py<PyAny>,
    origin: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let accepted = new_object(checks.accepted.bind(py))?;
    force_setattr(&accepted, pyo3::intern!(py, "_event"), event.bind(py))?;
    force_setattr(
        &accepted,
        pyo3::intern!(py, "_topic"),
        checks.topic.bind(py),
    )?;
    force_setattr(&accepted, pyo3::intern!(py, "_origin"), origin)?;
    Ok(accepted.unbind())
}

#[pymethods]
impl Model {
    /// `fields`: one dict per field in declaration order (`name`, `alias`, `kind`
    /// and the kind's constraints; `nullable`; `default` when not required).
    ///
    /// `checks` (for `accept_message`): `max_bytes`, `tolerance_us`, `node_of_site`
    /// (a dict, or None), `participant`/`site`/`node` (field names), `accepted`
    /// (the class) and `topic`.
    #[new]
    #[pyo3(signature = (cls, fields, after, checks=None, rules=Vec::new()))]
    fn new(
        cls: Bound<'_, PyType>,
        fields: Vec<Bound<'_, PyDict>>,
        after: Vec<Py<PyAny>>,
        checks: Option<Bound<'_, PyDict>>,
        rules: Vec<Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let py = cls.py();
        let fields = fields
            .iter()
            .map(field_from_spec)
            .collect::<PyResult<Vec<_>>>()?;
        if fields.len() > MAX_FIELDS {
            return Err(PyValueError::new_err(format!(
                "more than {MAX_FIELDS} fields"
            )));
        }
        let template = PyDict::new(py);
        let mut required = 0u64;
        for (index, field) in fields.iter().enumerate() {
            match &field.default {
                Some(default) => template.set_item(field.name.bind(py), default.bind(py))?,
                None => {
                    template.set_item(field.name.bind(py), py.None())?;
                    required |= 1u64 << index;
                }
            }
        }
        let checks = checks
            .map(|spec| checks_from_spec(&spec, &fields))
            .transpose()?;
        let rules = rules
            .iter()
            .map(|spec| rule_from_spec(spec, &fields))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Model {
            cls: cls.unbind(),
            fields,
            rules,
            after,
            template: template.unbind(),
            required,
            fields_sets: Mutex::new(Vec::new()),
            checks,
        })
    }

    /// `Accepted(event, topic, origin)` for a message that passes every check of
    /// SPEC §2 that the validator owns, `now` being processing time (in UTC);
    /// `None` to leave the message to the Python side, which names the problem.
    #[pyo3(signature = (value, key, origin, now))]
    fn accept_message(
        &self,
        py: Python<'_>,
        value: Option<&[u8]>,
        key: Option<&[u8]>,
        origin: &Bound<'_, PyAny>,
        now: &Bound<'_, PyAny>,
    ) -> Option<Py<PyAny>> {
        match self.attempt(py, value, key, origin, now) {
            Attempt::Accepted(accepted) => Some(accepted),
            Attempt::Built(_) | Attempt::Declined => None,
        }
    }

    /// The model instance pydantic would build from `data`, or `None` to leave it to pydantic.
    fn accept(&self, py: Python<'_>, data: &[u8]) -> Option<Py<PyAny>> {
        let read = self.read(py, data)?;
        // An after-validator's objection (or any failure building the instance):
        // pydantic raises it again, in its own words.
        self.build(py, read).ok()
    }
}

/// One call per message for the stream workers: the topic's compiled path, and
/// the Python steps for whatever it does not accept.
///
/// `Validator.validate_message` *is* this class's `validate_message` when the
/// extension is in use, so an accepted message costs no Python frame at all.
///
/// Not frozen, so that the cyclic garbage collector can clear it: `fallback`
/// is usually a bound method of the object that holds this router's method.
#[pyclass(module = "exnet_native")]
struct Router {
    /// Physical topic name -> its [`Model`] (the topics with a compiled path).
    models: Py<PyDict>,
    /// `fallback(value, key, origin, now, event)`: the outcome of a message not
    /// accepted here; `event` is the instance built here (a later check failed)
    /// or `None` (left to pydantic). `None` once the collector cleared it.
    fallback: Option<Py<PyAny>>,
    /// `clock()`: processing time when the caller gives none.
    clock: Py<PyAny>,
}

#[pymethods]
impl Router {
    #[new]
    fn new(models: Bound<'_, PyDict>, fallback: Py<PyAny>, clock: Py<PyAny>) -> PyResult<Self> {
        for (topic, model) in models.iter() {
            if !topic.is_instance_of::<PyString>() || !model.is_instance_of::<Model>() {
                return Err(PyValueError::new_err(
                    "models maps topic names (str) to Model",
                ));
            }
        }
        Ok(Router {
            models: models.copy()?.unbind(),
            fallback: Some(fallback),
            clock,
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.models)?;
        visit.call(&self.fallback)?;
        visit.call(&self.clock)
    }

    fn __clear__(&mut self) {
        self.fallback = None;
    }

    /// The outcome of one Kafka message read from `origin` (its `topic` names the
    /// physical topic) at processing time `now` (default: the clock).
    #[pyo3(signature = (value, key, origin, now=None))]
    fn validate_message(
        &self,
        py: Python<'_>,
        value: Bound<'_, PyAny>,
        key: Bound<'_, PyAny>,
        origin: Bound<'_, PyAny>,
        now: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let now = match now {
            Some(now) if !now.is_none() => now,
            _ => self.clock.bind(py).call0()?,
        };
        let topic = origin.getattr(pyo3::intern!(py, "topic"))?;
        let mut event = py.None();
        if let Some(model) = self.models.bind(py).get_item(&topic)? {
            // SAFETY: `new` admits only Model values, and the dict is our own copy.
            let model = unsafe { model.cast_unchecked::<Model>() }.get();
            // Anything but bytes (None, say) is left to the Python steps.
            let value_bytes = value.cast::<PyBytes>().ok();
            let key_bytes = key.cast::<PyBytes>().ok();
            match model.attempt(
                py,
                value_bytes.map(PyBytesMethods::as_bytes),
                key_bytes.map(PyBytesMethods::as_bytes),
                &origin,
                &now,
            ) {
                Attempt::Accepted(accepted) => return Ok(accepted),
                Attempt::Built(built) => event = built,
                Attempt::Declined => {}
            }
        }
        match &self.fallback {
            Some(fallback) => fallback.call1(py, (value, key, origin, now, event)),
            None => Err(PyValueError::new_err("the router was cleared")),
        }
    }
}

#[pymodule]
fn exnet_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Model>()?;
    module.add_class::<Router>()?;
    module.add_class::<Pattern>()?;
    Ok(())
}

//! Server-side filters: a subscription's JSON predicate over payloads, parsed once with precise errors and evaluated on a parsed payload.
//!
//! ```text
//! {"path":"a.b.0","op":"eq|ne|lt|lte|gt|gte|in|exists","value":...}
//! {"path":"loc","op":"within","value":[west,south,east,north]}     a GeoJSON Point in the box
//! {"and":[...]}  {"or":[...]}  {"not":<filter>}
//! ```
//!
//! A payload that is not JSON, or lacks the path, matches no comparison (so `{"not":...}` around
//! one matches it).

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// Largest filter text accepted, in bytes.
pub const MAX_FILTER_BYTES: usize = 4096;
/// Deepest nesting of `and`, `or` and `not` (a lone comparison is depth 1).
pub const MAX_FILTER_DEPTH: usize = 8;
/// Most segments in a path.
pub const MAX_PATH_SEGMENTS: usize = 16;

/// Why a filter was refused: what is wrong, and where in the filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter{at}: {problem}")]
pub struct FilterError {
    /// Where: `""` for the whole filter, `.and[1].value` inside it.
    at: String,
    problem: String,
}

impl FilterError {
    fn new(at: &str, problem: impl Into<String>) -> FilterError {
        FilterError {
            at: at.to_owned(),
            problem: problem.into(),
        }
    }
}

/// A parsed filter. Two filters with the same meaning written the same way share one
/// [`Filter::canonical`] text, which is how a node evaluates each distinct filter once.
#[derive(Debug, Clone)]
pub struct Filter {
    root: Node,
    canonical: Box<str>,
}

#[derive(Debug, Clone)]
enum Node {
    Compare { path: Path, test: Test },
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
}

#[derive(Debug, Clone)]
enum Test {
    Eq(Value),
    Ne(Value),
    Order(Ordering, Scalar),
    In(Vec<Value>),
    Exists,
    Within(GeoBox),
}

#[derive(Debug, Clone, Copy)]
enum Ordering {
    Lt,
    Lte,
    Gt,
    Gte,
}

/// What `lt`, `lte`, `gt` and `gte` compare with: a number or a string.
#[derive(Debug, Clone)]
enum Scalar {
    Number(f64),
    Text(String),
}

/// A dot path into a payload: object keys, and array indexes as numbers (`items.0.id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path {
    text: Box<str>,
    segments: Vec<Box<str>>,
}

impl Path {
    fn parse(text: &str, at: &str) -> Result<Path, FilterError> {
        if text.is_empty() {
            return Err(FilterError::new(at, "a path must not be empty"));
        }
        let segments: Vec<Box<str>> = text.split('.').map(Box::from).collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(FilterError::new(
                at,
                format!("{text:?} has an empty segment (paths are keys joined by single dots)"),
            ));
        }
        if segments.len() > MAX_PATH_SEGMENTS {
            return Err(FilterError::new(
                at,
                format!("a path may have at most {MAX_PATH_SEGMENTS} segments"),
            ));
        }
        Ok(Path {
            text: text.into(),
            segments,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this path in `document`: an object's key, or an array's index.
    pub fn lookup<'v>(&self, document: &'v Value) -> Option<&'v Value> {
        self.segments
            .iter()
            .try_fold(document, |value, segment| match value {
                Value::Object(map) => map.get(&**segment),
                Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            })
    }

    /// The longitude and latitude of the GeoJSON Point at this path in `document`.
    pub fn point(&self, document: &Value) -> Option<[f64; 2]> {
        geojson_point(self.lookup(document)?)
    }
}

/// A box of longitudes and latitudes, `[west, south, east, north]` as in GeoJSON; `west` above
/// `east` crosses the antimeridian.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoBox {
    /// Western edge, degrees of longitude.
    pub west: f64,
    /// Southern edge, degrees of latitude.
    pub south: f64,
    /// Eastern edge, degrees of longitude.
    pub east: f64,
    /// Northern edge, degrees of latitude.
    pub north: f64,
}

impl GeoBox {
    /// True when `[longitude, latitude]` lies in the box, edges included.
    pub fn contains(&self, [lon, lat]: [f64; 2]) -> bool {
        let in_longitude = if self.west <= self.east {
            self.west <= lon && lon <= self.east
        } else {
            lon >= self.west || lon <= self.east
        };
        in_longitude && self.south <= lat && lat <= self.north
    }

    /// The box as `[min, max]` corners, in one part, or two for a box across the antimeridian.
    pub fn parts(&self) -> Vec<[[f64; 2]; 2]> {
        if self.west <= self.east {
            vec![[[self.west, self.south], [self.east, self.north]]]
        } else {
            vec![
                [[self.west, self.south], [180.0, self.north]],
                [[-180.0, self.south], [self.east, self.north]],
            ]
        }
    }
}

/// `[longitude, latitude]` of a GeoJSON Point: `{"type":"Point","coordinates":[lon,lat,...]}`.
fn geojson_point(value: &Value) -> Option<[f64; 2]> {
    let object = value.as_object()?;
    if object.get("type")?.as_str()? != "Point" {
        return None;
    }
    match object.get("coordinates")?.as_array()?.as_slice() {
        [lon, lat, ..] => Some([lon.as_f64()?, lat.as_f64()?]),
        _ => None,
    }
}

impl Filter {
    /// Parses a filter's JSON text (at most [`MAX_FILTER_BYTES`]).
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError::new(
                "",
                format!(
                    "{} bytes is above the limit of {MAX_FILTER_BYTES}",
                    text.len()
                ),
            ));
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|error| FilterError::new("", format!("not valid JSON: {error}")))?;
        let root = node(&value, "", 1)?;
        let mut canonical = String::new();
        write_canonical(&root, &mut canonical);
        Ok(Filter {
            root,
            canonical: canonical.into_boxed_str(),
        })
    }

    /// The filter in one spelling (keys in one order, no whitespace): equal for equal filters.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Whether a payload matches; `document` is the parsed payload, `None` when it is not JSON.
    pub fn matches(&self, document: Option<&Value>) -> bool {
        self.root.matches(document)
    }

    /// The box a GeoJSON Point must lie in for the filter to match, and where the point is: a
    /// `within` at the top, or among the top `and`'s terms. A spatial index over these boxes
    /// finds the filters a point can match without evaluating the others.
    pub fn required_box(&self) -> Option<(&Path, &GeoBox)> {
        fn within(node: &Node) -> Option<(&Path, &GeoBox)> {
            match node {
                Node::Compare {
                    path,
                    test: Test::Within(geo_box),
                } => Some((path, geo_box)),
                _ => None,
            }
        }
        match &self.root {
            Node::And(terms) => terms.iter().find_map(within),
            other => within(other),
        }
    }
}

impl Node {
    fn matches(&self, document: Option<&Value>) -> bool {
        match self {
            Node::Compare { path, test } => document
                .and_then(|d| path.lookup(d))
                .is_some_and(|found| test.holds(found)),
            Node::And(terms) => terms.iter().all(|t| t.matches(document)),
            Node::Or(terms) => terms.iter().any(|t| t.matches(document)),
            Node::Not(term) => !term.matches(document),
        }
    }
}

impl Test {
    fn holds(&self, found: &Value) -> bool {
        match self {
            Test::Eq(value) => same(found, value),
            Test::Ne(value) => !same(found, value),
            Test::In(values) => values.iter().any(|v| same(found, v)),
            Test::Exists => true,
            Test::Within(geo_box) => geojson_point(found).is_some_and(|p| geo_box.contains(p)),
            Test::Order(ordering, bound) => {
                let order = match (found, bound) {
                    (Value::Number(n), Scalar::Number(b)) => {
                        n.as_f64().and_then(|n| n.partial_cmp(b))
                    }
                    (Value::String(s), Scalar::Text(b)) => Some(s.as_str().cmp(b.as_str())),
                    _ => None,
                };
                order.is_some_and(|order| match ordering {
                    Ordering::Lt => order.is_lt(),
                    Ordering::Lte => order.is_le(),
                    Ordering::Gt => order.is_gt(),
                    Ordering::Gte => order.is_ge(),
                })
            }
        }
    }
}

/// JSON equality with numbers compared by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

const OPS: &str = "eq, ne, lt, lte, gt, gte, in, exists or within";

fn node(value: &Value, at: &str, depth: usize) -> Result<Node, FilterError> {
    if depth > MAX_FILTER_DEPTH {
        return Err(FilterError::new(
            at,
            format!("nested deeper than {MAX_FILTER_DEPTH} levels"),
        ));
    }
    let Value::Object(object) = value else {
        return Err(FilterError::new(
            at,
            "must be an object: {\"path\",\"op\",\"value\"}, {\"and\":[...]}, {\"or\":[...]} or {\"not\":...}",
        ));
    };
    for combinator in ["and", "or", "not"] {
        if let Some(inner) = object.get(combinator) {
            if object.len() != 1 {
                return Err(FilterError::new(
                    at,
                    format!("{combinator:?} must be the object's only key"),
                ));
            }
            let at = format!("{at}.{combinator}");
            return match combinator {
                "not" => Ok(Node::Not(Box::new(node(inner, &at, depth + 1)?))),
                _ => {
                    let terms = match inner {
                        Value::Array(terms) if !terms.is_empty() => terms,
                        _ => {
                            return Err(FilterError::new(
                                &at,
                                "must be a non-empty array of filters",
                            ));
                        }
                    };
                    let terms = terms
                        .iter()
                        .enumerate()
                        .map(|(i, term)| node(term, &format!("{at}[{i}]"), depth + 1))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(if combinator == "and" {
                        Node::And(terms)
                    } else {
                        Node::Or(terms)
                    })
                }
            };
        }
    }
    comparison(object, at)
}

fn comparison(object: &Map<String, Value>, at: &str) -> Result<Node, FilterError> {
    if let Some(unknown) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "path" | "op" | "value"))
    {
        return Err(FilterError::new(
            at,
            format!("unknown key {unknown:?}; a comparison has \"path\", \"op\" and \"value\""),
        ));
    }
    let path = match object.get("path") {
        Some(Value::String(path)) => Path::parse(path, &format!("{at}.path"))?,
        Some(_) => return Err(FilterError::new(&format!("{at}.path"), "must be a string")),
        None => return Err(FilterError::new(at, "a comparison needs \"path\"")),
    };
    let op = match object.get("op") {
        Some(Value::String(op)) => op.as_str(),
        Some(_) => return Err(FilterError::new(&format!("{at}.op"), "must be a string")),
        None => {
            return Err(FilterError::new(
                at,
                format!("a comparison needs \"op\" ({OPS})"),
            ));
        }
    };
    let value_at = format!("{at}.value");
    let value = object.get("value");
    let needed = || FilterError::new(at, format!("{op:?} needs a \"value\""));
    let test = match op {
        "exists" => match value {
            None => Test::Exists,
            Some(_) => {
                return Err(FilterError::new(
                    &value_at,
                    "\"exists\" takes no value (wrap it in {\"not\":...} for absence)",
                ));
            }
        },
        "eq" => Test::Eq(value.ok_or_else(needed)?.clone()),
        "ne" => Test::Ne(value.ok_or_else(needed)?.clone()),
        "in" => match value.ok_or_else(needed)? {
            Value::Array(values) if !values.is_empty() => Test::In(values.clone()),
            _ => {
                return Err(FilterError::new(
                    &value_at,
                    "\"in\" takes a non-empty array of values",
                ));
            }
        },
        "lt" | "lte" | "gt" | "gte" => {
            let bound = match value.ok_or_else(needed)? {
                Value::Number(n) => Scalar::Number(n.as_f64().unwrap_or(f64::NAN)),
                Value::String(s) => Scalar::Text(s.clone()),
                _ => {
                    return Err(FilterError::new(
                        &value_at,
                        format!("{op:?} compares with a number or a string"),
                    ));
                }
            };
            let ordering = match op {
                "lt" => Ordering::Lt,
                "lte" => Ordering::Lte,
                "gt" => Ordering::Gt,
                _ => Ordering::Gte,
            };
            Test::Order(ordering, bound)
        }
        "within" => Test::Within(geo_box(value.ok_or_else(needed)?, &value_at)?),
        other => {
            return Err(FilterError::new(
                &format!("{at}.op"),
                format!("unknown op {other:?}; expected {OPS}"),
            ));
        }
    };
    Ok(Node::Compare { path, test })
}

fn geo_box(value: &Value, at: &str) -> Result<GeoBox, FilterError> {
    let wrong = || {
        FilterError::new(
            at,
            "\"within\" takes [west, south, east, north]: longitudes from -180 to 180, latitudes from -90 to 90, south not above north",
        )
    };
    let numbers: Vec<f64> = match value {
        Value::Array(items) if items.len() == 4 => items
            .iter()
            .map(|v| v.as_f64().ok_or_else(wrong))
            .collect::<Result<_, _>>()?,
        _ => return Err(wrong()),
    };
    let [west, south, east, north] = [numbers[0], numbers[1], numbers[2], numbers[3]];
    let longitude = |x: f64| (-180.0..=180.0).contains(&x);
    let latitude = |y: f64| (-90.0..=90.0).contains(&y);
    if !(longitude(west) && longitude(east) && latitude(south) && latitude(north)) || south > north
    {
        return Err(wrong());
    }
    Ok(GeoBox {
        west,
        south,
        east,
        north,
    })
}

/// Writes `node` as JSON with keys in one order, so equal filters have equal texts.
fn write_canonical(node: &Node, out: &mut String) {
    match node {
        Node::And(terms) | Node::Or(terms) => {
            let key = if matches!(node, Node::And(_)) {
                "and"
            } else {
                "or"
            };
            let _ = write!(out, "{{\"{key}\":[");
            for (i, term) in terms.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(term, out);
            }
            out.push_str("]}");
        }
        Node::Not(term) => {
            out.push_str("{\"not\":");
            write_canonical(term, out);
            out.push('}');
        }
        Node::Compare { path, test } => {
            let (op, value) = match test {
                Test::Eq(v) => ("eq", Some(v.clone())),
                Test::Ne(v) => ("ne", Some(v.clone())),
                Test::In(values) => ("in", Some(Value::Array(values.clone()))),
                Test::Exists => ("exists", None),
                Test::Within(b) => (
                    "within",
                    Some(serde_json::json!([b.west, b.south, b.east, b.north])),
                ),
                Test::Order(ordering, bound) => {
                    let op = match ordering {
                        Ordering::Lt => "lt",
                        Ordering::Lte => "lte",
                        Ordering::Gt => "gt",
                        Ordering::Gte => "gte",
                    };
                    let bound = match bound {
                        Scalar::Number(n) => serde_json::json!(n),
                        Scalar::Text(s) => Value::String(s.clone()),
                    };
                    (op, Some(bound))
                }
            };
            let _ = write!(
                out,
                "{{\"op\":\"{op}\",\"path\":{}",
                Value::String(path.as_str().to_owned())
            );
            if let Some(value) = value {
                let _ = write!(out, ",\"value\":{value}");
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(text: &str) -> Filter {
        Filter::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// Which of `payloads` (JSON texts, or anything else for a non-JSON payload) `text` matches.
    fn matching(text: &str, payloads: &[&str]) -> Vec<usize> {
        let filter = filter(text);
        payloads
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                let document: Option<Value> = serde_json::from_str(p).ok();
                filter.matches(document.as_ref())
            })
            .map(|(i, _)| i)
            .collect()
    }

    fn refused(text: &str) -> String {
        match Filter::parse(text) {
            Ok(_) => panic!("{text} was accepted"),
            Err(error) => error.to_string(),
        }
    }

    const PEOPLE: &[&str] = &[
        r#"{"id":1,"name":"ann","age":30,"tags":["a","b"],"loc":{"type":"Point","coordinates":[13.4,52.5]}}"#,
        r#"{"id":2,"name":"bob","age":41.5,"tags":["b"],"loc":{"type":"Point","coordinates":[2.35,48.85]}}"#,
        r#"{"id":3,"name":"cy","age":null,"loc":null}"#,
        r#"not json at all"#,
        r#"[1,2,3]"#,
    ];

    #[test]
    fn every_comparison_operator() {
        let cases: &[(&str, &[usize])] = &[
            (r#"{"path":"name","op":"eq","value":"bob"}"#, &[1]),
            (r#"{"path":"id","op":"eq","value":1.0}"#, &[0]),
            (r#"{"path":"age","op":"eq","value":null}"#, &[2]),
            (r#"{"path":"tags","op":"eq","value":["b"]}"#, &[1]),
            (r#"{"path":"name","op":"ne","value":"bob"}"#, &[0, 2]),
            (r#"{"path":"age","op":"lt","value":41.5}"#, &[0]),
            (r#"{"path":"age","op":"lte","value":41.5}"#, &[0, 1]),
            (r#"{"path":"age","op":"gt","value":30}"#, &[1]),
            (r#"{"path":"age","op":"gte","value":30}"#, &[0, 1]),
            (r#"{"path":"name","op":"lt","value":"b"}"#, &[0]),
            (r#"{"path":"name","op":"gte","value":"bob"}"#, &[1, 2]),
            (r#"{"path":"id","op":"in","value":[3,1,"2"]}"#, &[0, 2]),
            (r#"{"path":"tags","op":"exists"}"#, &[0, 1]),
            (r#"{"path":"loc","op":"exists"}"#, &[0, 1, 2]),
        ];
        for (text, expected) in cases {
            assert_eq!(&matching(text, PEOPLE), expected, "{text}");
        }
    }

    #[test]
    fn paths_reach_into_objects_and_arrays() {
        let cases: &[(&str, &[usize])] = &[
            (r#"{"path":"tags.0","op":"eq","value":"b"}"#, &[1]),
            (r#"{"path":"tags.1","op":"exists"}"#, &[0]),
            (r#"{"path":"loc.coordinates.1","op":"gt","value":50}"#, &[0]),
            (r#"{"path":"loc.type","op":"eq","value":"Point"}"#, &[0, 1]),
            (r#"{"path":"1","op":"eq","value":2}"#, &[4]),
            (r#"{"path":"name.0","op":"exists"}"#, &[]),
        ];
        for (text, expected) in cases {
            assert_eq!(&matching(text, PEOPLE), expected, "{text}");
        }
        let keyed: Value = json!({"0": {"x": true}});
        let path = Path::parse("0.x", "").unwrap();
        assert_eq!(path.lookup(&keyed), Some(&Value::Bool(true)));
    }

    #[test]
    fn within_a_box_on_a_geojson_point() {
        let berlin = r#"{"path":"loc","op":"within","value":[13.0,52.3,13.8,52.7]}"#;
        assert_eq!(matching(berlin, PEOPLE), [0]);
        let edges = r#"{"path":"loc","op":"within","value":[13.4,52.5,14,53]}"#;
        assert_eq!(matching(edges, PEOPLE), [0], "edges are inside");
        let europe = r#"{"path":"loc","op":"within","value":[-10,35,30,60]}"#;
        assert_eq!(matching(europe, PEOPLE), [0, 1]);
        let not_a_point = r#"{"path":"loc.coordinates","op":"within","value":[-180,-90,180,90]}"#;
        assert_eq!(matching(not_a_point, PEOPLE), Vec::<usize>::new());
        let across = filter(r#"{"path":"p","op":"within","value":[170,-10,-170,10]}"#);
        let at = |lon: f64| json!({"p": {"type": "Point", "coordinates": [lon, 0.0]}});
        assert!(across.matches(Some(&at(175.0))));
        assert!(across.matches(Some(&at(-175.0))));
        assert!(!across.matches(Some(&at(0.0))));
        let (path, geo_box) = across.required_box().unwrap();
        assert_eq!(path.as_str(), "p");
        assert_eq!(geo_box.parts().len(), 2);
    }

    #[test]
    fn combinators() {
        let cases: &[(&str, &[usize])] = &[
            (
                r#"{"and":[{"path":"age","op":"gt","value":20},{"path":"name","op":"ne","value":"bob"}]}"#,
                &[0],
            ),
            (
                r#"{"or":[{"path":"id","op":"eq","value":3},{"path":"tags.0","op":"eq","value":"b"}]}"#,
                &[1, 2],
            ),
            (
                r#"{"not":{"path":"name","op":"eq","value":"bob"}}"#,
                &[0, 2, 3, 4],
            ),
            (r#"{"not":{"not":{"path":"id","op":"exists"}}}"#, &[0, 1, 2]),
        ];
        for (text, expected) in cases {
            assert_eq!(&matching(text, PEOPLE), expected, "{text}");
        }
    }

    #[test]
    fn a_box_required_by_the_top_and_is_found_for_the_index() {
        let f = filter(
            r#"{"and":[{"path":"id","op":"gt","value":0},{"path":"loc","op":"within","value":[0,0,1,1]}]}"#,
        );
        assert_eq!(f.required_box().unwrap().1.east, 1.0);
        let f = filter(r#"{"or":[{"path":"loc","op":"within","value":[0,0,1,1]}]}"#);
        assert!(f.required_box().is_none(), "an or does not require its box");
    }

    #[test]
    fn equal_filters_share_their_canonical_text() {
        let a = filter(r#"{"value":[1,2],"op":"in","path":"id"}"#);
        let b = filter(r#" { "path" : "id", "op":"in", "value":[1, 2] } "#);
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(a.canonical(), r#"{"op":"in","path":"id","value":[1,2]}"#);
        let c = filter(r#"{"path":"id","op":"in","value":[2,1]}"#);
        assert_ne!(a.canonical(), c.canonical());
        assert_eq!(filter(a.canonical()).canonical(), a.canonical());
    }

    #[test]
    fn malformed_filters_say_what_is_wrong_and_where() {
        let cases: &[(&str, &str)] = &[
            ("{", "filter: not valid JSON"),
            ("[]", "filter: must be an object"),
            (r#"{"path":"a"}"#, "filter: a comparison needs \"op\""),
            (r#"{"op":"eq","value":1}"#, "needs \"path\""),
            (
                r#"{"path":"a","op":"like","value":1}"#,
                "filter.op: unknown op \"like\"",
            ),
            (r#"{"path":"a","op":"eq"}"#, "\"eq\" needs a \"value\""),
            (
                r#"{"path":"a","op":"eq","value":1,"x":2}"#,
                "unknown key \"x\"",
            ),
            (
                r#"{"path":"","op":"exists"}"#,
                "filter.path: a path must not be empty",
            ),
            (r#"{"path":"a..b","op":"exists"}"#, "empty segment"),
            (
                r#"{"path":7,"op":"exists"}"#,
                "filter.path: must be a string",
            ),
            (
                r#"{"path":"a","op":"exists","value":true}"#,
                "takes no value",
            ),
            (r#"{"path":"a","op":"in","value":[]}"#, "non-empty array"),
            (r#"{"path":"a","op":"in","value":3}"#, "non-empty array"),
            (
                r#"{"path":"a","op":"lt","value":[1]}"#,
                "a number or a string",
            ),
            (
                r#"{"path":"a","op":"within","value":[0,0,1]}"#,
                "[west, south, east, north]",
            ),
            (
                r#"{"path":"a","op":"within","value":[0,1,1,0]}"#,
                "south not above north",
            ),
            (
                r#"{"path":"a","op":"within","value":[0,0,181,1]}"#,
                "from -180 to 180",
            ),
            (r#"{"and":[]}"#, "filter.and: must be a non-empty array"),
            (r#"{"and":{"path":"a","op":"exists"}}"#, "non-empty array"),
            (
                r#"{"or":[{"path":"a","op":"exists"},5]}"#,
                "filter.or[1]: must be an object",
            ),
            (
                r#"{"not":{"and":[{"path":"a","op":"x","value":1}]}}"#,
                "filter.not.and[0].op",
            ),
            (
                r#"{"and":[{"path":"a","op":"exists"}],"path":"b"}"#,
                "the object's only key",
            ),
        ];
        for (text, expected) in cases {
            let error = refused(text);
            assert!(
                error.contains(expected),
                "{text}: {error:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn size_and_depth_are_bounded() {
        let mut deep = r#"{"path":"a","op":"exists"}"#.to_owned();
        for _ in 1..MAX_FILTER_DEPTH {
            deep = format!(r#"{{"not":{deep}}}"#);
        }
        filter(&deep);
        assert!(refused(&format!(r#"{{"not":{deep}}}"#)).contains("nested deeper than 8"));
        let long = format!(
            r#"{{"path":"a","op":"eq","value":"{}"}}"#,
            "x".repeat(MAX_FILTER_BYTES)
        );
        assert!(refused(&long).contains("above the limit of 4096"));
        let many = vec!["a"; MAX_PATH_SEGMENTS + 1].join(".");
        assert!(refused(&format!(r#"{{"path":"{many}","op":"exists"}}"#)).contains("at most 16"));
    }
}

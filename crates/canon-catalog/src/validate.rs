//! Validating an event against its catalog: the envelope, the type and version, the payload
//! schema, and the personal-data rules. Every problem is reported, not only the first.

use crate::code;

use std::fmt;

use canon_envelope::{CloudEvent, Data, Dialect, EnvelopeErrors, pointer_token};
use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use crate::catalog::Catalog;
use crate::model::PiiRule;
use crate::shorthand::HASH_PATTERN;

/// A stable code for a validation problem.
pub type ViolationCode = &'static str;

/// One reason an event does not satisfy its catalog.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Stable code: an envelope code (`missing-attribute`, ...) or one of `unknown-type`,
    /// `unknown-version`, `payload-missing`, `payload-not-json`, `payload-<keyword>`
    /// (`payload-required`, `payload-type`, `payload-enum`, `payload-unknown-field`, `payload-format`, ...),
    /// `pii-forbidden`, `pii-not-hashed`, `pii-raw-value`.
    pub code: ViolationCode,
    /// The event type, when known.
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    /// The payload version checked against, when known.
    pub version: Option<String>,
    /// JSON pointer of the failing part: into the envelope (`/time`) or into the payload
    /// (`/data/location/lat`).
    pub location: String,
    /// What is wrong.
    pub message: String,
}

impl Violation {
    /// Envelope problems as violations (no type or version known yet).
    pub fn from_envelope(errors: &EnvelopeErrors) -> Vec<Violation> {
        errors
            .iter()
            .map(|e| Violation {
                code: e.code.as_str(),
                type_name: None,
                version: None,
                location: e.location.clone(),
                message: e.message.clone(),
            })
            .collect()
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(t) = &self.type_name {
            write!(f, " [{t}")?;
            if let Some(v) = &self.version {
                write!(f, " v{v}")?;
            }
            write!(f, "]")?;
        }
        write!(
            f,
            " at {}: {}",
            if self.location.is_empty() {
                "/"
            } else {
                &self.location
            },
            self.message
        )
    }
}

fn hash_regex() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(HASH_PATTERN).unwrap_or_else(|_| unreachable!("constant pattern"))
    })
}

/// Whether a string holds a hash reference (`sha256:<hex>`), as a `hashed` field must.
pub(crate) fn is_hash(s: &str) -> bool {
    hash_regex().is_match(s)
}

/// Whether a string looks like a raw email address or phone number, which a `reference` field
/// must not hold.
pub(crate) fn looks_like_raw_pii(s: &str) -> bool {
    let email = s.contains('@')
        && s.rsplit_once('@')
            .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'));
    // A bare run of digits is an ordinary numeric id; a phone number shows its form: a leading
    // `+` or separators between the digits.
    let digits = s.chars().filter(char::is_ascii_digit).count();
    let phone = digits >= 7
        && s.chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c))
        && s.chars().any(|c| !c.is_ascii_digit());
    email || phone
}

impl Catalog {
    /// Decodes a document in `dialect` and validates it. Envelope problems are reported with
    /// the dialect's own locations.
    pub fn validate_document(
        &self,
        dialect: Dialect,
        input: &[u8],
    ) -> Result<CloudEvent, Vec<Violation>> {
        let event = dialect
            .decode(input)
            .map_err(|errors| Violation::from_envelope(&errors))?;
        let violations = self.validate(&event);
        if violations.is_empty() {
            Ok(event)
        } else {
            Err(violations)
        }
    }

    /// Validates a canonical event: its type must be declared, its payload must match the
    /// schema of its version (`dataversion`, a `.vN` type suffix, or the first version), and
    /// the personal-data rules must hold.
    ///
    /// A payload is first given to the version's one-pass check
    /// ([`PayloadVersion::fast_check`]); only a payload it does not know valid is parsed and
    /// checked in full ([`Catalog::validate_full`]).
    pub fn validate(&self, event: &CloudEvent) -> Vec<Violation> {
        self.validate_with(event, true)
    }

    /// [`Catalog::validate`] without the one-pass check: every payload parsed and checked in
    /// full. The answer is the same; this is for comparing the two paths.
    pub fn validate_full(&self, event: &CloudEvent) -> Vec<Violation> {
        self.validate_with(event, false)
    }

    fn validate_with(&self, event: &CloudEvent, fast_path: bool) -> Vec<Violation> {
        let mut out = Vec::new();
        let Some((ty, suffix_version)) = self.lookup(&event.ty) else {
            let mut message = format!("type {} is not declared in catalog {}", event.ty, self.name);
            if let Some(near) = self
                .types
                .keys()
                .find(|k| k.eq_ignore_ascii_case(&event.ty))
            {
                message.push_str(&format!("; did you mean {near}?"));
            }
            out.push(Violation {
                code: code::UNKNOWN_TYPE,
                type_name: Some(event.ty.clone()),
                version: None,
                location: "/type".into(),
                message,
            });
            return out;
        };
        let stated: Option<std::borrow::Cow<'_, str>> = event
            .data_version()
            .map(Into::into)
            .or(suffix_version.map(Into::into));
        let Some(pv) = ty.version(stated.as_deref()) else {
            let known: Vec<&str> = ty.versions.iter().map(|v| v.version.as_str()).collect();
            out.push(Violation {
                code: code::UNKNOWN_VERSION,
                type_name: Some(ty.name.clone()),
                version: stated.as_deref().map(str::to_owned),
                location: "/dataversion".into(),
                message: format!(
                    "{} has no version {}; declared: {}",
                    ty.name,
                    stated.unwrap_or_default(),
                    known.join(", ")
                ),
            });
            return out;
        };
        let violation = |code: ViolationCode, location: String, message: String| Violation {
            code,
            type_name: Some(ty.name.clone()),
            version: Some(pv.version.as_str().to_owned()),
            location,
            message,
        };
        // Most payloads are valid: the one-pass check says so without building a tree. When it
        // cannot, the payload is parsed and every problem is collected.
        if let (true, Some(fast), Some(Data::Json(raw))) = (fast_path, &pv.fast, &event.data)
            && fast.accepts(raw.get())
        {
            return out;
        }
        let payload: Value = match &event.data {
            None => {
                out.push(violation(
                    code::PAYLOAD_MISSING,
                    "/data".into(),
                    format!("{} requires a payload", ty.name),
                ));
                return out;
            }
            Some(Data::Json(raw)) => match serde_json::from_str(raw.get()) {
                Ok(v) => v,
                Err(e) => {
                    out.push(violation(
                        code::PAYLOAD_NOT_JSON,
                        "/data".into(),
                        e.to_string(),
                    ));
                    return out;
                }
            },
            Some(_) => {
                out.push(violation(
                    code::PAYLOAD_NOT_JSON,
                    "/data".into(),
                    format!("{} payloads are JSON; this event's data is not", ty.name),
                ));
                return out;
            }
        };
        // `is_valid` is much cheaper than collecting errors; most events are valid.
        if let Some(validator) = pv.validator.as_ref().filter(|v| !v.is_valid(&payload)) {
            for e in validator.iter_errors(&payload) {
                let base = format!("/data{}", e.instance_path());
                match e.kind() {
                    ValidationErrorKind::Required { property } => {
                        let name = property.as_str().unwrap_or_default();
                        let location = format!("{base}/{}", pointer_token(name));
                        out.push(violation(
                            code::PAYLOAD_REQUIRED,
                            location,
                            format!("required field {name} is missing"),
                        ));
                    }
                    ValidationErrorKind::AdditionalProperties { unexpected } => {
                        for name in unexpected {
                            let location = format!("{base}/{}", pointer_token(name));
                            let message = format!(
                                "field {name} is not declared for {} {}",
                                ty.name, pv.version
                            );
                            out.push(violation(code::PAYLOAD_UNKNOWN_FIELD, location, message));
                        }
                    }
                    kind => out.push(violation(keyword_code(kind.keyword()), base, e.to_string())),
                }
            }
        }
        for (path, rule) in &ty.personal_data {
            let Some(value) = path.lookup(&payload) else {
                continue;
            };
            let location = || {
                path.0.iter().fold(String::from("/data"), |at, s| {
                    format!("{at}/{}", pointer_token(s))
                })
            };
            match rule {
                PiiRule::Forbidden if !value.is_null() => {
                    out.push(violation(
                        code::PII_FORBIDDEN,
                        location(),
                        format!("{path} is personal data the catalog forbids in this event"),
                    ));
                }
                PiiRule::Hashed => {
                    if let Some(s) = value.as_str()
                        && !is_hash(s)
                    {
                        out.push(violation(
                            code::PII_NOT_HASHED,
                            location(),
                            format!(
                                "{path} must hold a hash such as sha256:<hex>, not a raw value"
                            ),
                        ));
                    }
                }
                PiiRule::Reference => {
                    if let Some(s) = value.as_str()
                        && looks_like_raw_pii(s)
                    {
                        out.push(violation(code::PII_RAW_VALUE, location(), format!("{path} must hold a reference id, but holds what looks like a raw email or phone number")));
                    }
                }
                _ => {}
            }
        }
        out
    }
}

fn keyword_code(keyword: &str) -> ViolationCode {
    match keyword {
        "type" => code::PAYLOAD_TYPE,
        "enum" | "const" => code::PAYLOAD_ENUM,
        "format" => code::PAYLOAD_FORMAT,
        "pattern" => code::PAYLOAD_PATTERN,
        "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" | "multipleOf" => {
            code::PAYLOAD_RANGE
        }
        "minLength" | "maxLength" | "minItems" | "maxItems" | "minProperties" | "maxProperties" => {
            code::PAYLOAD_SIZE
        }
        _ => code::PAYLOAD_CONSTRAINT,
    }
}

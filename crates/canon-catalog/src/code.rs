//! The registry of the stable codes this crate reports: diagnostics of `canon catalog check`,
//! validation violations and diff errors. Every code is listed in docs/lints.md (a test
//! checks both ways) and is never reused for another meaning.

/// `breaking-change-without-version-bump`
pub const BREAKING_CHANGE_WITHOUT_VERSION_BUMP: &str = "breaking-change-without-version-bump";
/// `duplicate-key`
pub const DUPLICATE_KEY: &str = "duplicate-key";
/// `duplicate-version`
pub const DUPLICATE_VERSION: &str = "duplicate-version";
/// `handler-rule-conflict`
pub const HANDLER_RULE_CONFLICT: &str = "handler-rule-conflict";
/// `hashed-field-not-string`
pub const HASHED_FIELD_NOT_STRING: &str = "hashed-field-not-string";
/// `invalid-schema`
pub const INVALID_SCHEMA: &str = "invalid-schema";
/// `invalid-shorthand`
pub const INVALID_SHORTHAND: &str = "invalid-shorthand";
/// `invalid-value`
pub const INVALID_VALUE: &str = "invalid-value";
/// `invalid-version`
pub const INVALID_VERSION: &str = "invalid-version";
/// `key-path-missing`
pub const KEY_PATH_MISSING: &str = "key-path-missing";
/// `key-path-not-scalar`
pub const KEY_PATH_NOT_SCALAR: &str = "key-path-not-scalar";
/// `key-path-optional`
pub const KEY_PATH_OPTIONAL: &str = "key-path-optional";
/// `missing-key`
pub const MISSING_KEY: &str = "missing-key";
/// `missing-producer`
pub const MISSING_PRODUCER: &str = "missing-producer";
/// `missing-schema`
pub const MISSING_SCHEMA: &str = "missing-schema";
/// `naming-convention`
pub const NAMING_CONVENTION: &str = "naming-convention";
/// `payload-constraint`
pub const PAYLOAD_CONSTRAINT: &str = "payload-constraint";
/// `payload-enum`
pub const PAYLOAD_ENUM: &str = "payload-enum";
/// `payload-format`
pub const PAYLOAD_FORMAT: &str = "payload-format";
/// `payload-missing`
pub const PAYLOAD_MISSING: &str = "payload-missing";
/// `payload-not-json`
pub const PAYLOAD_NOT_JSON: &str = "payload-not-json";
/// `payload-pattern`
pub const PAYLOAD_PATTERN: &str = "payload-pattern";
/// `payload-range`
pub const PAYLOAD_RANGE: &str = "payload-range";
/// `payload-required`
pub const PAYLOAD_REQUIRED: &str = "payload-required";
/// `payload-size`
pub const PAYLOAD_SIZE: &str = "payload-size";
/// `payload-type`
pub const PAYLOAD_TYPE: &str = "payload-type";
/// `payload-unknown-field`
pub const PAYLOAD_UNKNOWN_FIELD: &str = "payload-unknown-field";
/// `personal-data-path-missing`
pub const PERSONAL_DATA_PATH_MISSING: &str = "personal-data-path-missing";
/// `pii-forbidden`
pub const PII_FORBIDDEN: &str = "pii-forbidden";
/// `pii-not-hashed`
pub const PII_NOT_HASHED: &str = "pii-not-hashed";
/// `pii-raw-value`
pub const PII_RAW_VALUE: &str = "pii-raw-value";
/// `schema-and-payload`
pub const SCHEMA_AND_PAYLOAD: &str = "schema-and-payload";
/// `topic-conflict`
pub const TOPIC_CONFLICT: &str = "topic-conflict";
/// `type-removed`
pub const TYPE_REMOVED: &str = "type-removed";
/// `undeclared-personal-data`
pub const UNDECLARED_PERSONAL_DATA: &str = "undeclared-personal-data";
/// `unknown-event-type`
pub const UNKNOWN_EVENT_TYPE: &str = "unknown-event-type";
/// `unknown-key`
pub const UNKNOWN_KEY: &str = "unknown-key";
/// `unknown-service`
pub const UNKNOWN_SERVICE: &str = "unknown-service";
/// `unknown-type`
pub const UNKNOWN_TYPE: &str = "unknown-type";
/// `unknown-version`
pub const UNKNOWN_VERSION: &str = "unknown-version";
/// `unsupported-format-version`
pub const UNSUPPORTED_FORMAT_VERSION: &str = "unsupported-format-version";
/// `unsupported-yaml`
pub const UNSUPPORTED_YAML: &str = "unsupported-yaml";
/// `unused-service`
pub const UNUSED_SERVICE: &str = "unused-service";
/// `version-bump-missing`
pub const VERSION_BUMP_MISSING: &str = "version-bump-missing";
/// `version-order`
pub const VERSION_ORDER: &str = "version-order";
/// `version-removed`
pub const VERSION_REMOVED: &str = "version-removed";
/// `version-suffix-mismatch`
pub const VERSION_SUFFIX_MISMATCH: &str = "version-suffix-mismatch";
/// `versions-and-schema`
pub const VERSIONS_AND_SCHEMA: &str = "versions-and-schema";
/// `yaml-syntax`
pub const YAML_SYNTAX: &str = "yaml-syntax";

/// Every code above.
pub const ALL: &[&str] = &[
    BREAKING_CHANGE_WITHOUT_VERSION_BUMP,
    DUPLICATE_KEY,
    DUPLICATE_VERSION,
    HANDLER_RULE_CONFLICT,
    HASHED_FIELD_NOT_STRING,
    INVALID_SCHEMA,
    INVALID_SHORTHAND,
    INVALID_VALUE,
    INVALID_VERSION,
    KEY_PATH_MISSING,
    KEY_PATH_NOT_SCALAR,
    KEY_PATH_OPTIONAL,
    MISSING_KEY,
    MISSING_PRODUCER,
    MISSING_SCHEMA,
    NAMING_CONVENTION,
    PAYLOAD_CONSTRAINT,
    PAYLOAD_ENUM,
    PAYLOAD_FORMAT,
    PAYLOAD_MISSING,
    PAYLOAD_NOT_JSON,
    PAYLOAD_PATTERN,
    PAYLOAD_RANGE,
    PAYLOAD_REQUIRED,
    PAYLOAD_SIZE,
    PAYLOAD_TYPE,
    PAYLOAD_UNKNOWN_FIELD,
    PERSONAL_DATA_PATH_MISSING,
    PII_FORBIDDEN,
    PII_NOT_HASHED,
    PII_RAW_VALUE,
    SCHEMA_AND_PAYLOAD,
    TOPIC_CONFLICT,
    TYPE_REMOVED,
    UNDECLARED_PERSONAL_DATA,
    UNKNOWN_EVENT_TYPE,
    UNKNOWN_KEY,
    UNKNOWN_SERVICE,
    UNKNOWN_TYPE,
    UNKNOWN_VERSION,
    UNSUPPORTED_FORMAT_VERSION,
    UNSUPPORTED_YAML,
    UNUSED_SERVICE,
    VERSION_BUMP_MISSING,
    VERSION_ORDER,
    VERSION_REMOVED,
    VERSION_SUFFIX_MISMATCH,
    VERSIONS_AND_SCHEMA,
    YAML_SYNTAX,
];

//! Rust code for a catalog: one struct per event type and payload version, with serde, the
//! type's name, version, topic, keys, consent purpose and handler rules as constants of
//! `canon_sdk::Event`, and validation against the catalog itself.
//!
//! The `canon_sdk::catalog!` macro and `canon catalog gen rust FILE` both call [`generate`], so
//! what the CLI prints is exactly what the macro compiles. The code names everything through
//! `::canon_sdk`, so a crate that uses it depends on `canon-sdk` only.
//!
//! Mapping from the (expanded) JSON Schema of a payload:
//!
//! | schema | Rust |
//! |---|---|
//! | object with `properties` | a struct (unknown fields are ignored when read; `validate()` refuses them) |
//! | object with an `additionalProperties` schema | `BTreeMap<String, T>` |
//! | other objects, `{}`, anything unrecognised | `serde_json::Value` |
//! | string with `enum` | an enum, one variant per value |
//! | string (any format) | `String`, kept exactly as written |
//! | integer / number / boolean | `i64` / `f64` / `bool` |
//! | array | `Vec<T>` |
//! | `T \| null`, or a field not `required` | `Option<T>` |

use std::collections::BTreeSet;

use canon_catalog::{Catalog, EventType, PayloadVersion};
use heck::{ToSnakeCase, ToUpperCamelCase};
use proc_macro2::{Ident, Span, TokenStream};
use quote::{format_ident, quote};
use serde_json::Value;

/// Where the generated code finds the catalog text at run time (for validation).
#[derive(Debug, Clone)]
pub enum Source<'a> {
    /// `include_str!(path)`: the macro's choice, so that editing the catalog rebuilds the crate.
    Include(&'a str),
    /// The catalog text as a string literal: the CLI's choice, so the printed file stands alone.
    Inline(&'a str),
}

/// The items for `catalog`: `catalog()`, and per type and version a struct (named
/// `<TypeInUpperCamelCase>V<version with _ for .>`) implementing `canon_sdk::Event`, plus an
/// alias without the version suffix for the newest version.
pub fn generate(catalog: &Catalog, file_name: &str, source: Source<'_>) -> TokenStream {
    let mut g = Gen::default();
    let text = match source {
        Source::Include(path) => quote!(include_str!(#path)),
        Source::Inline(text) => quote!(#text),
    };
    let doc = format!(
        " The `{}` catalog, loaded once (it was checked when this code was generated).{}",
        catalog.name,
        catalog
            .summary
            .as_deref()
            .map(|s| format!(" {s}"))
            .unwrap_or_default()
    );
    g.items.push(quote! {
        #[doc = #doc]
        pub fn catalog() -> &'static ::canon_sdk::Catalog {
            static CATALOG: ::std::sync::OnceLock<::canon_sdk::Catalog> = ::std::sync::OnceLock::new();
            CATALOG.get_or_init(|| ::canon_sdk::__private::load_catalog(#text, #file_name))
        }
    });
    for ty in catalog.types.values() {
        let mut newest = None;
        for pv in &ty.versions {
            newest = Some(g.event(ty, pv));
        }
        if let Some(newest) = newest {
            let alias = ident(&base_name(&ty.name));
            let target = ident(&newest);
            let doc = format!(" The newest version of `{}`.", ty.name);
            if alias != target && g.used.insert(alias.to_string()) {
                g.items
                    .push(quote!(#[doc = #doc] pub type #alias = #target;));
            }
        }
    }
    let items = g.items;
    quote!(#(#items)*)
}

/// Pretty-printed source text of generated items.
pub fn render(tokens: &TokenStream) -> String {
    match syn::parse2::<syn::File>(tokens.clone()) {
        Ok(file) => {
            // prettyplease writes items back to back; a blank line after each top-level item
            // reads better.
            let text = prettyplease::unparse(&file);
            let mut out = String::with_capacity(text.len() + text.len() / 20);
            for line in text.lines() {
                out.push_str(line);
                out.push('\n');
                if line == "}" || (line.starts_with("pub type ") && line.ends_with(';')) {
                    out.push('\n');
                }
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
            out
        }
        // Unreachable for generated code; fall back to the token text rather than panic.
        Err(_) => tokens.to_string(),
    }
}

/// The struct name of one version of a type.
pub fn struct_name(ty: &EventType, pv: &PayloadVersion) -> String {
    format!(
        "{}V{}",
        base_name(&ty.name),
        pv.version.as_str().replace('.', "_")
    )
}

fn base_name(type_name: &str) -> String {
    let name = type_name.to_upper_camel_case();
    if name.starts_with(|c: char| c.is_ascii_digit()) || name.is_empty() {
        format!("E{name}")
    } else {
        name
    }
}

#[derive(Default)]
struct Gen {
    items: Vec<TokenStream>,
    used: BTreeSet<String>,
}

/// A field of a generated struct: its JSON name and Rust name.
struct Field {
    json: String,
    ident: Ident,
}

impl Gen {
    fn unique(&mut self, wanted: String) -> String {
        let mut name = wanted.clone();
        let mut n = 2;
        while !self.used.insert(name.clone()) {
            name = format!("{wanted}{n}");
            n += 1;
        }
        name
    }

    /// The struct of one version; returns its name.
    fn event(&mut self, ty: &EventType, pv: &PayloadVersion) -> String {
        let name = self.unique(struct_name(ty, pv));
        let mut doc = vec![format!(" {}", ty.summary), String::new()];
        doc.push(format!(
            " Payload version {} of `{}` (topic `{}`).",
            pv.version, ty.name, ty.topic
        ));
        if let Some(d) = &ty.deprecated {
            doc.push(format!(
                " Deprecated{}.",
                d.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ));
        }
        let fields = self.structure(&name, &pv.schema, &doc);
        let ident = ident(&name);
        let type_name = &ty.name;
        let version = pv.version.as_str();
        let [major, minor, patch] = version_parts(version);
        let topic = &ty.topic;
        let consent = option_str(ty.consent.as_deref());
        let personal = !ty.personal_data.is_empty();
        let may_emit = match &ty.handlers.may_emit {
            Some(list) => quote!(Some(&[#(#list),*])),
            None => quote!(None),
        };
        let must_not = &ty.handlers.must_not_emit;
        let note = option_str(ty.handlers.note.as_deref());
        let aggregate = match (&ty.aggregate, &fields) {
            (Some(path), Some(fields)) => {
                let access = access(&path.0, fields);
                quote! {
                    fn aggregate_key(&self) -> Option<String> {
                        ::canon_sdk::__private::aggregate_key(#access)
                    }
                }
            }
            _ => quote!(),
        };
        let idempotency = match &fields {
            Some(fields) if !ty.idempotency.is_empty() => {
                let parts = ty.idempotency.iter().map(|p| access(&p.0, fields));
                quote! {
                    fn idempotency_key(&self) -> Option<String> {
                        ::canon_sdk::__private::idempotency_key(
                            <Self as ::canon_sdk::Event>::TYPE,
                            &[#(::canon_sdk::__private::to_value(#parts)),*],
                        )
                    }
                }
            }
            _ => quote!(),
        };
        self.items.push(quote! {
            impl ::canon_sdk::Event for #ident {
                const TYPE: &'static str = #type_name;
                const VERSION: &'static str = #version;
                const SEMVER: ::canon_sdk::Version = ::canon_sdk::Version::new(#major, #minor, #patch);
                const TOPIC: Option<&'static str> = Some(#topic);
                const CONSENT: Option<&'static str> = #consent;
                const PERSONAL_DATA: bool = #personal;
                const RULES: ::canon_sdk::HandlerRules = ::canon_sdk::HandlerRules {
                    may_emit: #may_emit,
                    must_not_emit: &[#(#must_not),*],
                    note: #note,
                };
                #aggregate
                #idempotency
                fn validate(&self) -> Result<(), ::canon_sdk::Invalid> {
                    ::canon_sdk::__private::validate(catalog(), self)
                }
            }
        });
        name
    }

    /// A struct for an object schema with properties; `None` (and a `Value` alias-free
    /// fallback) when the payload is not such an object.
    fn structure(&mut self, name: &str, schema: &Value, doc: &[String]) -> Option<Vec<Field>> {
        let struct_ident = ident(name);
        let props = schema.get("properties").and_then(Value::as_object);
        let Some(props) = props.filter(|_| is_type(schema, "object")) else {
            // Not a closed record: the payload is carried as a JSON value.
            self.items.push(quote! {
                #(#[doc = #doc])*
                #[derive(Debug, Clone, PartialEq, ::canon_sdk::__private::serde::Serialize, ::canon_sdk::__private::serde::Deserialize)]
                #[serde(crate = "::canon_sdk::__private::serde", transparent)]
                pub struct #struct_ident(pub ::canon_sdk::__private::serde_json::Value);
            });
            return None;
        };
        let required: BTreeSet<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut fields = Vec::new();
        let mut members = Vec::new();
        let mut taken = BTreeSet::new();
        for (json, sub) in props {
            let mut rust = field_name(json);
            while !taken.insert(rust.clone()) {
                rust.push('_');
            }
            let f = ident(&rust);
            let wire = f.to_string();
            let hint = format!("{name}{}", json.to_upper_camel_case());
            let mut ty = self.rust_type(sub, &hint);
            let (nullable, _) = nullable_inner(sub);
            let is_required = required.contains(json.as_str());
            let mut attrs = Vec::new();
            if wire.trim_start_matches("r#") != json {
                attrs.push(quote!(#[serde(rename = #json)]));
            }
            if !is_required {
                attrs.push(quote!(#[serde(default, skip_serializing_if = "Option::is_none")]));
                if !nullable {
                    ty = quote!(Option<#ty>);
                }
            }
            let field_doc = sub
                .get("description")
                .and_then(Value::as_str)
                .map(|d| format!(" {d}"))
                .unwrap_or_else(|| format!(" `{json}`"));
            members.push(quote!(#[doc = #field_doc] #(#attrs)* pub #f: #ty));
            fields.push(Field {
                json: json.clone(),
                ident: f,
            });
        }
        // Tolerant when reading: a handler of 1.0 whose range accepts 1.1 reads 1.1 events that
        // carry a field it does not know. `validate()` applies the closed schema.
        self.items.push(quote! {
            #(#[doc = #doc])*
            #[derive(Debug, Clone, PartialEq, ::canon_sdk::__private::serde::Serialize, ::canon_sdk::__private::serde::Deserialize)]
            #[serde(crate = "::canon_sdk::__private::serde")]
            pub struct #struct_ident { #(#members,)* }
        });
        Some(fields)
    }

    fn rust_type(&mut self, schema: &Value, hint: &str) -> TokenStream {
        let (nullable, inner) = nullable_inner(schema);
        if nullable {
            let t = self.rust_type(&inner, hint);
            return quote!(Option<#t>);
        }
        let value = quote!(::canon_sdk::__private::serde_json::Value);
        match schema.get("type").and_then(Value::as_str) {
            Some("string") => match schema.get("enum").and_then(Value::as_array) {
                Some(values) => self.enumeration(hint, values),
                None => quote!(String),
            },
            Some("integer") => quote!(i64),
            Some("number") => quote!(f64),
            Some("boolean") => quote!(bool),
            Some("array") => {
                let item = match schema.get("items") {
                    Some(items) => self.rust_type(items, &format!("{hint}Item")),
                    None => value,
                };
                quote!(Vec<#item>)
            }
            Some("object") if schema.get("properties").is_some() => {
                let name = self.unique(hint.to_owned());
                let doc = [format!(" A `{hint}` object.")];
                self.structure(&name, schema, &doc);
                let ident = ident(&name);
                quote!(#ident)
            }
            Some("object") => match schema.get("additionalProperties") {
                Some(ap @ Value::Object(_)) if !ap.as_object().is_some_and(|m| m.is_empty()) => {
                    let t = self.rust_type(ap, &format!("{hint}Value"));
                    quote!(::std::collections::BTreeMap<String, #t>)
                }
                _ => value,
            },
            _ => value,
        }
    }

    fn enumeration(&mut self, hint: &str, values: &[Value]) -> TokenStream {
        let name = self.unique(hint.to_owned());
        let ident = ident(&name);
        let mut taken = BTreeSet::new();
        let variants = values.iter().filter_map(Value::as_str).map(|v| {
            let mut variant = v.to_upper_camel_case();
            if variant.is_empty() || variant.starts_with(|c: char| c.is_ascii_digit()) {
                variant = format!("V{variant}");
            }
            while !taken.insert(variant.clone()) {
                variant.push('_');
            }
            let variant = ident_raw(&variant);
            let doc = format!(" `{v}`");
            quote!(#[doc = #doc] #[serde(rename = #v)] #variant)
        });
        let variants: Vec<_> = variants.collect();
        let doc = format!(" The values of `{hint}`.");
        self.items.push(quote! {
            #[doc = #doc]
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ::canon_sdk::__private::serde::Serialize, ::canon_sdk::__private::serde::Deserialize)]
            #[serde(crate = "::canon_sdk::__private::serde")]
            pub enum #ident { #(#variants,)* }
        });
        quote!(#ident)
    }
}

/// Whether a schema allows null, and the schema without the null alternative.
fn nullable_inner(schema: &Value) -> (bool, Value) {
    if let Some(types) = schema.get("type").and_then(Value::as_array)
        && types.iter().any(|t| t == "null")
    {
        let rest: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
        let mut inner = schema.clone();
        inner["type"] = match rest.as_slice() {
            [one] => (*one).clone(),
            _ => Value::Array(rest.into_iter().cloned().collect()),
        };
        if let Some(values) = inner.get_mut("enum").and_then(Value::as_array_mut) {
            values.retain(|v| !v.is_null());
        }
        return (true, inner);
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array)
        && any.len() == 2
        && any
            .iter()
            .any(|s| s == &serde_json::json!({"type": "null"}))
        && let Some(other) = any
            .iter()
            .find(|s| *s != &serde_json::json!({"type": "null"}))
    {
        return (true, other.clone());
    }
    (false, schema.clone())
}

fn is_type(schema: &Value, t: &str) -> bool {
    schema.get("type").and_then(Value::as_str) == Some(t)
}

/// `&self.a.b` when every step is a plain field; a lookup by JSON path otherwise.
fn access(path: &[String], fields: &[Field]) -> TokenStream {
    if let [one] = path
        && let Some(f) = fields.iter().find(|f| &f.json == one)
    {
        let ident = &f.ident;
        return quote!(&self.#ident);
    }
    quote!(&::canon_sdk::__private::lookup(self, &[#(#path),*]))
}

fn version_parts(v: &str) -> [u64; 3] {
    let mut parts = [0u64; 3];
    for (slot, piece) in parts.iter_mut().zip(v.split('.')) {
        *slot = piece.parse().unwrap_or(0);
    }
    parts
}

fn option_str(s: Option<&str>) -> TokenStream {
    match s {
        Some(s) => quote!(Some(#s)),
        None => quote!(None),
    }
}

fn field_name(json: &str) -> String {
    let mut name = json.to_snake_case();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name = format!("f_{name}");
    }
    name
}

fn ident(name: &str) -> Ident {
    ident_raw(name)
}

/// An identifier, raw (`r#type`) when it is a keyword; `self`-like keywords that cannot be raw
/// get a trailing underscore.
fn ident_raw(name: &str) -> Ident {
    const NOT_RAW: &[&str] = &["self", "Self", "super", "crate", "_"];
    if NOT_RAW.contains(&name) {
        return format_ident!("{name}_");
    }
    if syn::parse_str::<Ident>(name).is_ok() {
        Ident::new(name, Span::call_site())
    } else {
        Ident::new_raw(name, Span::call_site())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Catalog {
        let loaded = Catalog::load(yaml, "t.yaml");
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        loaded.catalog.expect("catalog")
    }

    #[test]
    fn generates_structs_enums_and_the_event_impl() {
        let c = load(
            "canon: 1\nname: t\nnaming: area.action.state\nservices: {svc: s}\ntypes:\n  streak.incremented:\n    summary: A streak advanced.\n    producers: [svc]\n    aggregate: userId\n    idempotency: userId+streakDay\n    personal_data: {userId: reference}\n    handlers:\n      must_not_emit: [streak.incremented]\n      note: No streak mutations.\n    payload:\n      userId: string\n      streakDay: date\n      reason: enum(post, challenge)\n      type?: string | null\n      tags: string[]\n",
        );
        let code = render(&generate(&c, "t.yaml", Source::Inline("x")));
        expect_test::expect_file!["../tests/streak.rs.txt"].assert_eq(&code);
    }
}

//! The macros of `canon-sdk`; use them as `canon_sdk::catalog!` and `canon_sdk::Event`.

use std::path::Path;

use canon_catalog::Catalog;
use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::quote;
use syn::{Data, DeriveInput, Fields, LitStr, parse_macro_input};

/// Generates one struct per event type and payload version of a catalog file, with serde and
/// `canon_sdk::Event`. The path is relative to the crate's `Cargo.toml`; the crate rebuilds
/// when the file changes, and a catalog with errors fails the build with every diagnostic.
/// `canon catalog gen rust FILE` prints the same code.
#[proc_macro]
pub fn catalog(input: TokenStream) -> TokenStream {
    let lit = parse_macro_input!(input as LitStr);
    match catalog_items(&lit) {
        Ok(tokens) => tokens.into(),
        Err(message) => syn::Error::new(lit.span(), message)
            .to_compile_error()
            .into(),
    }
}

fn catalog_items(lit: &LitStr) -> Result<Tokens, String> {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let path = Path::new(&dir).join(lit.value());
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read catalog {}: {e}", path.display()))?;
    let file_name = lit.value();
    let loaded = Catalog::load(&text, &file_name);
    if loaded.has_errors() {
        let lines: Vec<String> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == canon_catalog::Severity::Error)
            .map(ToString::to_string)
            .collect();
        return Err(format!(
            "catalog {file_name} has errors (`canon catalog check {file_name}` shows them too):\n{}",
            lines.join("\n")
        ));
    }
    let catalog = loaded
        .catalog
        .ok_or_else(|| format!("catalog {file_name} could not be read"))?;
    let abs = path.to_string_lossy().into_owned();
    Ok(canon_codegen::generate(
        &catalog,
        &file_name,
        canon_codegen::Source::Include(&abs),
    ))
}

/// Implements `canon_sdk::Event` for a hand-written payload type.
///
/// ```text
/// #[derive(Serialize, Deserialize, canon_sdk::Event)]
/// #[canon(type = "order.placed", version = "1.0", topic = "orders",
///         must_not_emit("order.placed"), consent = "marketing", personal_data)]
/// struct OrderPlaced {
///     #[canon(aggregate, idempotency)]
///     order_id: String,
///     #[canon(idempotency)]
///     attempt: u32,
/// }
/// ```
///
/// `type` and `version` are required; `may_emit(...)`, `must_not_emit(...)`, `note = "..."`,
/// `topic`, `consent` and `personal_data` are optional. Key fields are marked on the fields,
/// in the order they make up the idempotency key.
#[proc_macro_derive(Event, attributes(canon))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match derive(&input) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

#[derive(Default)]
struct Attrs {
    ty: Option<LitStr>,
    version: Option<LitStr>,
    topic: Option<LitStr>,
    consent: Option<LitStr>,
    note: Option<LitStr>,
    personal: bool,
    may_emit: Option<Vec<LitStr>>,
    must_not_emit: Vec<LitStr>,
}

fn derive(input: &DeriveInput) -> syn::Result<Tokens> {
    let mut a = Attrs::default();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("canon")) {
        attr.parse_nested_meta(|m| {
            let key = m
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            match key.as_str() {
                "type" => a.ty = Some(m.value()?.parse()?),
                "version" => a.version = Some(m.value()?.parse()?),
                "topic" => a.topic = Some(m.value()?.parse()?),
                "consent" => a.consent = Some(m.value()?.parse()?),
                "note" => a.note = Some(m.value()?.parse()?),
                "personal_data" => a.personal = true,
                "may_emit" | "must_not_emit" => {
                    let mut list = Vec::new();
                    let content;
                    syn::parenthesized!(content in m.input);
                    let lits = content.parse_terminated(|p| p.parse::<LitStr>(), syn::Token![,])?;
                    list.extend(lits);
                    if key == "may_emit" {
                        a.may_emit = Some(list);
                    } else {
                        a.must_not_emit = list;
                    }
                }
                _ => return Err(m.error(format!("unknown canon attribute `{key}`"))),
            }
            Ok(())
        })?;
    }
    let span = proc_macro2::Span::call_site();
    let ty =
        a.ty.ok_or_else(|| syn::Error::new(span, "missing #[canon(type = \"...\")]"))?;
    let version = a
        .version
        .ok_or_else(|| syn::Error::new(span, "missing #[canon(version = \"...\")]"))?;
    let parts = parse_version(&version.value())
        .ok_or_else(|| syn::Error::new(version.span(), "expected MAJOR[.MINOR[.PATCH]]"))?;
    let [major, minor, patch] = parts;

    let mut aggregate = None;
    let mut idempotency = Vec::new();
    if let Data::Struct(s) = &input.data {
        for (i, field) in s.fields.iter().enumerate() {
            let access = match (&field.ident, &s.fields) {
                (Some(id), _) => quote!(#id),
                (None, Fields::Unnamed(_)) => {
                    let index = syn::Index::from(i);
                    quote!(#index)
                }
                _ => continue,
            };
            for attr in field.attrs.iter().filter(|a| a.path().is_ident("canon")) {
                attr.parse_nested_meta(|m| {
                    if m.path.is_ident("aggregate") {
                        aggregate = Some(access.clone());
                        Ok(())
                    } else if m.path.is_ident("idempotency") {
                        idempotency.push(access.clone());
                        Ok(())
                    } else {
                        Err(m.error("expected `aggregate` or `idempotency`"))
                    }
                })?;
            }
        }
    }
    let name = &input.ident;
    let (impl_g, ty_g, where_g) = input.generics.split_for_impl();
    let opt = |l: &Option<LitStr>| match l {
        Some(l) => quote!(Some(#l)),
        None => quote!(None),
    };
    let topic = opt(&a.topic);
    let consent = opt(&a.consent);
    let note = opt(&a.note);
    let personal = a.personal;
    let may = match &a.may_emit {
        Some(l) => quote!(Some(&[#(#l),*])),
        None => quote!(None),
    };
    let must_not = &a.must_not_emit;
    let aggregate = aggregate.map(|f| {
        quote! {
            fn aggregate_key(&self) -> Option<String> {
                ::canon_sdk::__private::aggregate_key(&self.#f)
            }
        }
    });
    let idempotency = (!idempotency.is_empty()).then(|| {
        quote! {
            fn idempotency_key(&self) -> Option<String> {
                ::canon_sdk::__private::idempotency_key(
                    <Self as ::canon_sdk::Event>::TYPE,
                    &[#(::canon_sdk::__private::to_value(&self.#idempotency)),*],
                )
            }
        }
    });
    Ok(quote! {
        impl #impl_g ::canon_sdk::Event for #name #ty_g #where_g {
            const TYPE: &'static str = #ty;
            const VERSION: &'static str = #version;
            const SEMVER: ::canon_sdk::Version = ::canon_sdk::Version::new(#major, #minor, #patch);
            const TOPIC: Option<&'static str> = #topic;
            const CONSENT: Option<&'static str> = #consent;
            const PERSONAL_DATA: bool = #personal;
            const RULES: ::canon_sdk::HandlerRules = ::canon_sdk::HandlerRules {
                may_emit: #may,
                must_not_emit: &[#(#must_not),*],
                note: #note,
            };
            #aggregate
            #idempotency
        }
    })
}

fn parse_version(v: &str) -> Option<[u64; 3]> {
    let mut parts = [0u64; 3];
    for (n, piece) in v.split('.').enumerate() {
        *parts.get_mut(n)? = piece.parse().ok()?;
    }
    Some(parts)
}

//! The OpenAPI 3.1 document of the native API, generated from the handlers' annotations.
//! docs/openapi.json is a copy; a test fails when it is stale (`CANON_BLESS=1` rewrites it).

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Canon",
        description = "Canon's HTTP API: publish CloudEvents checked against their catalog, consume them through subscriptions (pull with leases, or push), manage dead letters, replay, and look events up. Errors are RFC 9457 problem+json with a stable `code`.",
        license(name = "Apache-2.0")
    ),
    paths(
        crate::publish::publish_routed,
        crate::publish::publish_to_topic,
        crate::subs::create,
        crate::subs::list,
        crate::subs::show,
        crate::subs::delete,
        crate::subs::pull,
        crate::subs::ack,
        crate::subs::nack,
        crate::subs::extend,
        crate::subs::reject,
        crate::subs::replay,
        crate::subs::dlq_list,
        crate::subs::dlq_show,
        crate::subs::dlq_redrive,
        crate::subs::dlq_purge,
        crate::query::topics,
        crate::query::topic,
        crate::query::event,
        crate::query::chain,
        crate::query::correlation,
        crate::query::catalog,
        crate::query::catalog_type,
        crate::tail::tail,
    ),
    tags(
        (name = "publish", description = "Publishing events"),
        (name = "subscriptions", description = "Creating and listing subscriptions"),
        (name = "consume", description = "Pull consumers: leases, ack, nack, extend"),
        (name = "dlq", description = "Dead letters and replay"),
        (name = "topics", description = "Topics and the live tail"),
        (name = "events", description = "Looking events up"),
        (name = "catalog", description = "The loaded catalogs"),
    )
)]
struct ApiDoc;

/// The document.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
}

//! Apps and their subscriptions: declarative `Subscription` and `Component` resources read at
//! start-up, each app's `GET /dapr/subscribe` asked until it answers, and one Canon push
//! subscription per (app, pubsub, topic) that delivers as a sidecar would.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use canon_backend::Backend;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::DaprApp;
use crate::push::Subscriber;
use crate::subs::{DaprDelivery, DaprRule, PushSpec, RetrySpec, Subscription};
use crate::{Shared, problem::Problem, with_code};
use canon_dapr::rules;

/// One subscription as an app declares it (the `GET /dapr/subscribe` item, or a
/// `Subscription` resource's `spec`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AppSubscription {
    #[serde(alias = "pubsubName")]
    pub(crate) pubsubname: String,
    pub(crate) topic: String,
    pub(crate) route: Option<String>,
    pub(crate) routes: Option<Routes>,
    pub(crate) dead_letter_topic: Option<String>,
    #[serde(default)]
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) bulk_subscribe: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct Routes {
    #[serde(default)]
    rules: Vec<RuleSpec>,
    default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct RuleSpec {
    #[serde(rename = "match")]
    when: String,
    path: String,
}

/// What the resource files declare.
#[derive(Debug, Default)]
pub(crate) struct Resources {
    /// Pub/sub component names.
    pub(crate) pubsubs: Vec<String>,
    /// State store component names.
    pub(crate) state_stores: Vec<String>,
    /// Declarative subscriptions with their scopes (empty: every app).
    pub(crate) subscriptions: Vec<(AppSubscription, Vec<String>)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Resource {
    api_version: String,
    kind: String,
    metadata: ResourceMeta,
    #[serde(default)]
    spec: Value,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Deserialize)]
struct ResourceMeta {
    name: String,
}

fn yaml_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Reads the resource files. Any problem (a document that is not YAML, an unknown
/// `apiVersion`, a routing rule outside the CEL subset) is an error naming the file.
pub(crate) fn load(paths: &[PathBuf]) -> Result<Resources, String> {
    let mut res = Resources::default();
    for file in yaml_files(paths)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("dapr resource {}: {e}", file.display()))?;
        for (n, doc) in split_documents(&text).into_iter().enumerate() {
            read_document(&file, n, doc, &mut res)?;
        }
    }
    Ok(res)
}

fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(d) = docs.last_mut() {
            d.push_str(line);
            d.push('\n');
        }
    }
    docs.into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

fn read_document(file: &Path, n: usize, doc: String, res: &mut Resources) -> Result<(), String> {
    let at = || format!("dapr resource {} (document {})", file.display(), n + 1);
    let value = canon_catalog::yaml::load(&doc)
        .map_err(|e| format!("{}: line {}: {}", at(), e.position.line, e.message))?
        .value;
    let r: Resource = serde_json::from_value(value).map_err(|e| format!("{}: {e}", at()))?;
    match r.kind.as_str() {
        "Component" => {
            let ty = r.spec.get("type").and_then(Value::as_str).unwrap_or("");
            if ty.starts_with("pubsub.") {
                res.pubsubs.push(r.metadata.name);
            } else if ty.starts_with("state.") {
                res.state_stores.push(r.metadata.name);
            }
            // Other components (bindings, secret stores) are Dapr's business, not Canon's.
            Ok(())
        }
        "Subscription" => {
            let mut spec: AppSubscription =
                serde_json::from_value(r.spec).map_err(|e| format!("{}: spec: {e}", at()))?;
            match r.api_version.as_str() {
                "dapr.io/v1alpha1" => spec.routes = None,
                "dapr.io/v2alpha1" => {}
                other => {
                    return Err(format!(
                        "{}: apiVersion {other} is not dapr.io/v1alpha1 or dapr.io/v2alpha1",
                        at()
                    ));
                }
            }
            delivery_of(&spec, "check").map_err(|e| format!("{}: {e}", at()))?;
            res.subscriptions.push((spec, r.scopes));
            Ok(())
        }
        other => Err(format!(
            "{}: kind {other} is not Subscription or Component",
            at()
        )),
    }
}

/// The push settings of an app subscription; a rule outside the CEL subset is an error.
fn delivery_of(s: &AppSubscription, app_id: &str) -> Result<DaprDelivery, String> {
    let mut rules = Vec::new();
    let mut default_path = s.route.clone();
    if let Some(r) = &s.routes {
        for rule in &r.rules {
            rules::parse(&rule.when).map_err(|e| format!("routing rule {:?}: {e}", rule.when))?;
            rules.push(DaprRule {
                when: rule.when.clone(),
                path: rule.path.clone(),
            });
        }
        if r.default.is_some() {
            default_path.clone_from(&r.default);
        }
    }
    Ok(DaprDelivery {
        app_id: app_id.to_owned(),
        pubsub: s.pubsubname.clone(),
        rules,
        default_path,
        dead_letter_topic: s.dead_letter_topic.clone().filter(|t| !t.is_empty()),
        raw_payload: s
            .metadata
            .get("rawPayload")
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
    })
}

/// The Canon subscription name of an app subscription.
pub(crate) fn subscription_name(app: &str, pubsub: &str, topic: &str) -> String {
    format!("dapr:{app}:{pubsub}:{}", topic.replace('/', "|"))
}

/// The retry policy of Dapr-style subscriptions: 4 attempts 1 s apart, so an event that always
/// fails reaches its dead-letter topic (or Canon's DLQ) about 3 s after its first delivery.
fn dapr_retry() -> RetrySpec {
    RetrySpec {
        max_attempts: Some(4),
        initial_backoff_ms: Some(1000),
        multiplier: Some(1.0),
        max_backoff_ms: Some(1000),
        jitter: Some(0.0),
    }
}

/// Asks every configured app for its subscriptions (until it answers) and installs them with
/// the declarative ones; runs in the background from start-up.
pub(crate) fn start<B: Backend>(app: &Shared<B>) {
    for a in app.config.dapr.apps.clone() {
        let app = app.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(100);
            loop {
                if *app.shutdown.borrow() {
                    return;
                }
                match ask(&app, &a).await {
                    Ok(subs) => {
                        if let Err(e) = apply(&app, &a, subs).await {
                            tracing::error!(app = %a.id, error = %e, "dapr: installing subscriptions failed");
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(app = %a.id, error = %e, "dapr: app not answering /dapr/subscribe yet");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                }
            }
        });
    }
}

/// A configured app's client, made at start-up and kept: discovery and every job tick reuse
/// its connections.
#[derive(Debug)]
pub(crate) struct AppClient {
    /// The app's base URL; its routes go under its path.
    pub(crate) base: url::Url,
    pub(crate) client: Subscriber,
}

impl AppClient {
    /// The request target of `route` in the app, and its URL for messages.
    pub(crate) fn route(&self, route: &str) -> (String, String) {
        crate::push::route(&self.base, route)
    }
}

/// The clients of the configured apps, by app id. Fails for an app URL that is not a usable
/// `http://` URL.
pub(crate) fn clients(
    apps: &[DaprApp],
    timeout: Duration,
) -> Result<HashMap<String, AppClient>, String> {
    apps.iter()
        .map(|a| {
            let base = url::Url::parse(&a.url)
                .map_err(|e| format!("dapr app {}: {}: {e}", a.id, a.url))?;
            let client = Subscriber::new(&base, a.protocol, timeout)
                .map_err(|e| format!("dapr app {}: {e}", a.id))?;
            Ok((a.id.clone(), AppClient { base, client }))
        })
        .collect()
}

/// One `GET /dapr/subscribe`; a 404 or 405 means no programmatic subscriptions; any other
/// failure that the app is not ready yet (asked again).
async fn ask<B: Backend>(app: &Shared<B>, a: &DaprApp) -> Result<Vec<AppSubscription>, String> {
    let Some(to) = app.dapr_apps.get(&a.id) else {
        return Err(format!("no client for app {}", a.id));
    };
    let (target, url) = to.route("dapr/subscribe");
    let res = to
        .client
        .request(Method::GET, &target, HeaderMap::new(), Vec::new())
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    // The app answered but serves no subscription list: none.
    if matches!(
        res.status,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
    ) {
        return Ok(Vec::new());
    }
    if !res.status.is_success() {
        return Err(format!("{url} answered {}", res.status));
    }
    let items: Vec<Value> =
        serde_json::from_slice(&res.body).map_err(|e| format!("{url}: not a JSON array: {e}"))?;
    // A malformed item is skipped with a logged error; the others count.
    Ok(items
        .into_iter()
        .filter_map(|v| match serde_json::from_value::<AppSubscription>(v) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(app = %a.id, error = %e, "dapr: ignoring a malformed subscription");
                None
            }
        })
        .collect())
}

/// Installs an app's subscriptions (programmatic and declarative), and removes the ones of a
/// previous discovery it no longer declares. Returns the installed names.
async fn apply<B: Backend>(
    app: &Shared<B>,
    a: &DaprApp,
    programmatic: Vec<AppSubscription>,
) -> Result<Vec<String>, String> {
    let declared = app
        .dapr_resources
        .subscriptions
        .iter()
        .filter(|(_, scopes)| scopes.is_empty() || scopes.contains(&a.id))
        .map(|(s, _)| s.clone());
    let mut installed = Vec::new();
    let mut failed = 0;
    for s in programmatic.into_iter().chain(declared) {
        match install(app, a, &s).await {
            Ok(name) => installed.push(name),
            Err(Refusal::Invalid(e)) => {
                tracing::error!(app = %a.id, topic = %s.topic, error = %e, "dapr: subscription refused");
            }
            Err(Refusal::Failed(e)) => {
                failed += 1;
                tracing::error!(app = %a.id, topic = %s.topic, error = %e, "dapr: subscription refused");
            }
        }
    }
    if failed > 0 {
        // Something may be missing for a passing reason: remove nothing on this round.
        return Ok(installed);
    }
    let prefix = format!("dapr:{}:", a.id);
    let stale: Vec<_> = app
        .subscriptions()
        .into_iter()
        .filter(|s| s.name.starts_with(&prefix) && !installed.contains(&s.name))
        .collect();
    for s in stale {
        crate::subs::remove_subscription(app, &s)
            .await
            .map_err(|e| format!("removing {}: {}", s.name, e.detail))?;
    }
    Ok(installed)
}

/// Why an app subscription was not installed.
enum Refusal {
    /// It is wrong (unknown pubsub, no route, a bad rule): it never will be.
    Invalid(String),
    /// Storage failed: it may work next time.
    Failed(String),
}

async fn install<B: Backend>(
    app: &Shared<B>,
    a: &DaprApp,
    s: &AppSubscription,
) -> Result<String, Refusal> {
    if super::component(app, &s.pubsubname).is_none() {
        return Err(Refusal::Invalid(format!(
            "pubsub {} is not configured",
            s.pubsubname
        )));
    }
    let delivery = delivery_of(s, &a.id).map_err(Refusal::Invalid)?;
    if delivery.default_path.is_none() && delivery.rules.is_empty() {
        return Err(Refusal::Invalid("the subscription has no route".to_owned()));
    }
    app.ensure_topic(&s.topic)
        .await
        .map_err(|e| Refusal::Failed(e.to_string()))?;
    // bulkSubscribe: up to maxMessagesCount events per request (default 100, at most 1,000).
    let batch = s
        .bulk_subscribe
        .as_ref()
        .filter(|b| b.get("enabled").and_then(Value::as_bool) == Some(true))
        .map(|b| {
            b.get("maxMessagesCount")
                .and_then(Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(100)
                .clamp(1, 1000)
        });
    let push = PushSpec {
        url: a.url.trim_end_matches('/').to_owned(),
        format: crate::subs::PushFormat::Structured,
        protocol: a.protocol,
        concurrency: None,
        batch,
        dapr: Some(delivery),
    };
    let name = subscription_name(&a.id, &s.pubsubname, &s.topic);
    if let Ok(existing) = app.subscription(&name).await {
        if existing.push.as_ref().and_then(|p| p.dapr.as_ref()) != push.dapr.as_ref()
            || existing.push.as_ref().map(|p| &p.url) != Some(&push.url)
            || existing.push.as_ref().and_then(|p| p.batch) != push.batch
            || existing.push.as_ref().map(|p| p.protocol) != Some(push.protocol)
        {
            crate::subs::replace_push(app, &existing, Some(push))
                .await
                .map_err(|e| Refusal::Failed(e.detail))?;
        }
        return Ok(name);
    }
    let sub = Subscription {
        name: name.clone(),
        topic: s.topic.clone(),
        types: Vec::new(),
        consumer: None,
        ordered: None,
        lease_ms: None,
        max_in_flight: None,
        retry: dapr_retry(),
        push: Some(push),
        dead_letter_topic: None,
    };
    crate::subs::install(app, sub)
        .await
        .map_err(|e| Refusal::Failed(e.detail))?;
    Ok(name)
}

/// `POST /v1/dapr/apps/{id}/subscribe` (operator): asks the app again and reinstalls.
pub(crate) async fn rediscover<B: Backend>(
    State(app): State<Shared<B>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let who = match app.identify(&headers) {
        Ok(w) => w,
        Err(p) => return with_code(p),
    };
    if !who.admin && who.service.is_some() {
        return with_code(
            Problem::new("forbidden", "only the operator re-discovers subscriptions")
                .with("rule", "admin-only"),
        );
    }
    let Some(a) = app.config.dapr.apps.iter().find(|a| a.id == id).cloned() else {
        return with_code(Problem::new(
            "not-found",
            format!("no Dapr app {id} is configured"),
        ));
    };
    let subs = match ask(&app, &a).await {
        Ok(s) => s,
        Err(e) => {
            return with_code(Problem::new(
                "app-unreachable",
                format!("app {id} did not answer: {e}"),
            ));
        }
    };
    match apply(&app, &a, subs).await {
        Ok(names) => (StatusCode::OK, Json(json!({ "subscriptions": names }))).into_response(),
        Err(e) => with_code(Problem::new("internal", e)),
    }
}

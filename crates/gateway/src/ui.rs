//! The web dashboard at `/ui`: server-rendered HTML over the same [`Patches`] logic and the
//! same credentials as the JSON API. A login form takes an API key with the `read` scope and
//! starts a server-side session (HttpOnly, SameSite=Strict cookie holding a random id);
//! actions (cancel, retry, pause, resume) need the `admin` scope, the session's CSRF token and
//! a same-origin `Origin`. Without a session, pages answer `303` to `/ui/login`; the JSON API
//! never accepts the cookie and keeps answering `401`. Every response carries a strict
//! Content-Security-Policy; the only script is the embedded poller that refreshes `#live`.

mod agent_run;
mod board;
mod charts;
mod html;

/// HTML escaping for text and double-quoted attributes (also the public pages').
pub(crate) use html::esc;
mod pages;
mod session;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::auth::Scope;
use crate::clients::ClientAddress;
use crate::config::UiConfig;
use crate::error::GatewayError;
use crate::guard::Guard;
use crate::patches::Patches;
use crate::ui::board::ListRequest;
use crate::ui::html::{Chrome, Tab};
use crate::ui::pages::Viewer;
use crate::ui::session::{COOKIE, Session};
pub use crate::ui::session::{SessionStore, Sessions, StoredSession};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// What the dashboard's handlers reach.
#[derive(Clone)]
pub struct UiState {
    /// The logic, shared with the JSON API.
    pub patches: Patches,
    /// Credentials and rate limits, shared with the JSON API.
    pub guard: Arc<Guard>,
    /// Live sessions.
    pub sessions: Arc<Sessions>,
    /// Dashboard settings.
    pub config: Arc<UiConfig>,
    /// Origins allowed to POST besides the request's own host (the public URL's).
    pub public_origin: Option<String>,
    /// Mark the cookie `Secure` (the public URL is https).
    pub secure_cookie: bool,
}

/// The dashboard's routes.
pub fn routes(state: UiState) -> Router {
    let authenticated = Router::new()
        .route("/ui", get(overview))
        .route("/ui/patches", get(patch_list))
        .route("/ui/patches/{id}", get(patch_detail))
        .route("/ui/alerts", get(alerts))
        .route("/ui/logout", post(logout))
        .route("/ui/patches/{id}/{action}", post(patch_action))
        .route("/ui/targets/{target}/{action}", post(target_action))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    Router::new()
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/assets/app.js", get(script))
        .route("/ui/assets/app.css", get(stylesheet))
        .merge(authenticated)
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// A failure shown as an HTML page with the status the JSON API would use.
pub struct UiFailure(GatewayError);

impl From<GatewayError> for UiFailure {
    fn from(err: GatewayError) -> Self {
        Self(err)
    }
}

impl IntoResponse for UiFailure {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if let GatewayError::Internal(detail) | GatewayError::Unavailable(detail) = &self.0 {
            tracing::warn!(error = %detail, "dashboard page failed");
        }
        let chrome = Chrome {
            title: status.canonical_reason().unwrap_or("error"),
            tab: Tab::None,
            user: None,
            csrf: "",
            refresh_ms: 0,
        };
        let body = html::page(&chrome, &pages::error(status.as_u16(), &self.0.to_string()));
        let mut response = (status, Html(body)).into_response();
        if let GatewayError::TooManyRequests { retry_after_s } = self.0 {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s.max(1)));
        }
        response
    }
}

type Page = Result<Response, UiFailure>;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// `next` if it is a dashboard path of this site, else `/ui` (no open redirects).
fn safe_next(next: &str) -> &str {
    let local = next.starts_with("/ui")
        && !next.starts_with("/ui/login")
        && !next.contains("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control);
    if local { next } else { "/ui" }
}

/// True when a state-changing request comes from a page of this site: its `Origin` (or,
/// lacking one, its `Referer`) names this host or the public URL.
fn same_origin(state: &UiState, headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let allowed = |origin: &str| {
        (!host.is_empty()
            && (origin == format!("http://{host}") || origin == format!("https://{host}")))
            || state.public_origin.as_deref() == Some(origin)
    };
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        return allowed(origin);
    }
    let Some(referer) = headers.get(header::REFERER).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let origin_of_referer = referer
        .split_once("://")
        .map(|(scheme, rest)| {
            let authority = rest.split('/').next().unwrap_or("");
            format!("{scheme}://{authority}")
        })
        .unwrap_or_default();
    allowed(&origin_of_referer)
}

/// The live session the request's cookie names, with its caller as the credentials say now.
async fn find_session(
    state: &UiState,
    headers: &HeaderMap,
) -> Result<Option<Session>, GatewayError> {
    let Some(id) = cookie_value(headers) else {
        return Ok(None);
    };
    let Some(stored) = state.sessions.get(&id).await? else {
        return Ok(None);
    };
    match state.guard.credentials.by_hash(&stored.credential)? {
        Some(principal) => Ok(Some(Session {
            principal,
            csrf: stored.csrf,
        })),
        None => {
            tracing::info!("dashboard session ended: its key is no longer valid");
            state.sessions.end(&id).await?;
            Ok(None)
        }
    }
}

async fn require_session(
    State(state): State<UiState>,
    mut request: Request,
    next: Next,
) -> Response {
    // The caller is found again from the gateway's current credentials: a session opened
    // with a key that was revoked (or removed from config) has ended.
    let session = match find_session(&state, request.headers()).await {
        Ok(session) => session,
        Err(err) => return UiFailure(err).into_response(),
    };
    let Some(session) = session else {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/ui", |pq| pq.as_str())
            .to_owned();
        let next_path = if request.method() == Method::GET {
            safe_next(&path).to_owned()
        } else {
            "/ui".to_owned()
        };
        let location = format!("/ui/login?next={}", html::url_part(&next_path));
        return Redirect::to(&location).into_response();
    };
    if request.method() == Method::POST && !same_origin(&state, request.headers()) {
        return UiFailure(GatewayError::Forbidden(
            "cross-site request refused: the Origin is not this dashboard".to_owned(),
        ))
        .into_response();
    }
    if let Err(err) = state.guard.charge(&session.principal.name) {
        return UiFailure(err).into_response();
    }
    request.extensions_mut().insert(session);
    next.run(request).await
}

fn viewer<'a>(state: &'a UiState, session: &'a Session) -> Viewer<'a> {
    Viewer {
        csrf: &session.csrf,
        admin: session.principal.require(Scope::Admin).is_ok(),
        now_ms: now_ms(),
        jaeger_url: state.config.jaeger_url.as_deref(),
    }
}

fn render(
    state: &UiState,
    session: &Session,
    title: &str,
    tab: Tab,
    live: bool,
    body: &str,
) -> Response {
    let chrome = Chrome {
        title,
        tab,
        user: Some(&session.principal.name),
        csrf: &session.csrf,
        refresh_ms: if live {
            millis(state.config.refresh)
        } else {
            0
        },
    };
    Html(html::page(&chrome, body)).into_response()
}

/// `?next=` of the login form.
#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_form(
    query: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let next = query.ok().and_then(|Query(q)| q.next).unwrap_or_default();
    login_page(StatusCode::OK, safe_next(&next), None)
}

fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let chrome = Chrome {
        title: "Log in",
        tab: Tab::None,
        user: None,
        csrf: "",
        refresh_ms: 0,
    };
    (
        status,
        Html(html::page(&chrome, &pages::login(next, error))),
    )
        .into_response()
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
struct LoginForm {
    key: String,
    #[serde(default)]
    next: String,
}

async fn login(
    State(state): State<UiState>,
    headers: HeaderMap,
    client: Option<Extension<ClientAddress>>,
    Form(form): Form<LoginForm>,
) -> Page {
    let client = client.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |Extension(found)| {
        found.0
    });
    let next = safe_next(&form.next).to_owned();
    if !same_origin(&state, &headers) {
        return Ok(login_page(
            StatusCode::FORBIDDEN,
            &next,
            Some("cross-site login refused"),
        ));
    }
    // Failed attempts are counted per client address: guessing is slowed down where it comes
    // from, and neither locks the admin out from elsewhere nor, behind a shared address, from
    // there (a correct key is always let in).
    let principal = match state.guard.credentials.key(form.key.trim()) {
        Ok(principal) => principal,
        Err(err) => {
            let refusal = state.guard.refuse_login(client, err);
            if matches!(refusal, GatewayError::TooManyRequests { .. }) {
                return Err(refusal.into());
            }
            return Ok(login_page(
                StatusCode::UNAUTHORIZED,
                &next,
                Some("unknown API key"),
            ));
        }
    };
    if let Err(err) = principal.require(Scope::Read) {
        return Ok(login_page(
            StatusCode::FORBIDDEN,
            &next,
            Some(&err.to_string()),
        ));
    }
    tracing::info!(principal = %principal.name, "dashboard login");
    let credential: [u8; 32] = Sha256::digest(form.key.trim().as_bytes()).into();
    let id = state.sessions.start(credential).await?;
    let cookie = format!(
        "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
        state.sessions.ttl().as_secs(),
        if state.secure_cookie { "; Secure" } else { "" }
    );
    let mut response = Redirect::to(&next).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie)
            .map_err(|err| GatewayError::Internal(format!("session cookie: {err}")))?,
    );
    Ok(response)
}

/// Fields of every action form.
#[derive(Debug, Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
}

fn check_csrf(session: &Session, form: &ActionForm) -> Result<(), UiFailure> {
    if session.csrf_matches(&form.csrf) {
        return Ok(());
    }
    Err(UiFailure(GatewayError::Forbidden(
        "the form's CSRF token is missing or stale; reload the page and try again".to_owned(),
    )))
}

async fn logout(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Page {
    check_csrf(&session, &form)?;
    if let Some(id) = cookie_value(&headers) {
        state.sessions.end(&id).await?;
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("ghost_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(response)
}

async fn overview(State(state): State<UiState>, Extension(session): Extension<Session>) -> Page {
    let viewer = viewer(&state, &session);
    let data = board::overview(&state.patches, &session.principal, viewer.now_ms).await?;
    let body = pages::overview(&viewer, &data);
    Ok(render(
        &state,
        &session,
        "Overview",
        Tab::Overview,
        true,
        &body,
    ))
}

/// Query string of the patch list.
#[derive(Debug, Deserialize)]
struct ListParams {
    target: Option<String>,
    status: Option<String>,
    q: Option<String>,
    page_size: Option<u32>,
    page_token: Option<String>,
    page: Option<u32>,
}

async fn patch_list(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    query: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Page {
    let Query(params) = query.map_err(|err| GatewayError::BadRequest(err.body_text()))?;
    let request = ListRequest::parse(
        params.target,
        params.status,
        params.q,
        params.page_size,
        params.page_token,
        params.page,
    )?;
    let page = board::list(&state.patches, &session.principal, &request).await?;
    let targets: Vec<String> = state
        .patches
        .targets(&session.principal)
        .await?
        .into_iter()
        .map(|t| t.target)
        .collect();
    let viewer = viewer(&state, &session);
    let body = pages::list(&viewer, &targets, &request, &page);
    Ok(render(
        &state,
        &session,
        "Patches",
        Tab::Patches,
        true,
        &body,
    ))
}

async fn patch_detail(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Page {
    let (detail, events) = board::detail(&state.patches, &session.principal, &id).await?;
    // Poll until the patch has ended and its summary is there.
    let live = !detail.view.status.is_terminal() || detail.summary.is_none();
    let viewer = viewer(&state, &session);
    let body = pages::detail(&viewer, &detail, &events);
    Ok(render(
        &state,
        &session,
        &format!("Patch {id}"),
        Tab::Patches,
        live,
        &body,
    ))
}

async fn alerts(State(state): State<UiState>, Extension(session): Extension<Session>) -> Page {
    let viewer = viewer(&state, &session);
    let listed = state.patches.alerts(&session.principal).await;
    let body = match &listed {
        Ok(list) => pages::alerts(&viewer, Ok(list)),
        Err(err @ GatewayError::NotConfigured(_)) => pages::alerts(&viewer, Err(&err.to_string())),
        Err(err) => return Err(UiFailure(GatewayError::Unavailable(err.to_string()))),
    };
    Ok(render(&state, &session, "Alerts", Tab::Alerts, true, &body))
}

async fn patch_action(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Page {
    check_csrf(&session, &form)?;
    match action.as_str() {
        "cancel" => state.patches.cancel(&session.principal, &id).await?,
        "retry" => state.patches.retry(&session.principal, &id).await?,
        _ => return Err(UiFailure(GatewayError::NotFound(format!("{id}/{action}")))),
    };
    Ok(Redirect::to(&format!("/ui/patches/{}", html::url_part(&id))).into_response())
}

async fn target_action(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Path((target, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Page {
    check_csrf(&session, &form)?;
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => {
            return Err(UiFailure(GatewayError::NotFound(format!(
                "{target}/{action}"
            ))));
        }
    };
    state
        .patches
        .set_paused(&session.principal, &target, paused)
        .await?;
    Ok(Redirect::to("/ui").into_response())
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        APP_JS,
    )
        .into_response()
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        APP_CSS,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_dashboard_paths_are_followed_after_login() {
        assert_eq!(
            safe_next("/ui/patches?target=MAIN"),
            "/ui/patches?target=MAIN"
        );
        assert_eq!(safe_next("https://evil.example"), "/ui");
        assert_eq!(safe_next("//evil.example/ui"), "/ui");
        assert_eq!(safe_next("/ui//evil.example"), "/ui");
        assert_eq!(safe_next("/ui/login"), "/ui");
        assert_eq!(safe_next("/v1/patches"), "/ui");
        assert_eq!(safe_next(""), "/ui");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; ghost_session=abc; b=2"),
        );
        assert_eq!(cookie_value(&headers).as_deref(), Some("abc"));
        assert_eq!(cookie_value(&HeaderMap::new()), None);
    }
}

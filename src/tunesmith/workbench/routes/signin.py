"""Sign-in and sign-out; the health check."""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from tunesmith.workbench.security import SESSION_COOKIE, SESSION_HOURS, read_form
from tunesmith.workbench.site import Site, cookie_flags


def router(site: Site) -> APIRouter:
    r = APIRouter()

    @r.get("/health")
    async def health():
        return {"status": "ok"}

    @r.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request):
        return site.page(request, "login.html", error="")

    @r.post("/login")
    async def login(request: Request):
        form = await read_form(request)
        if not site.api_key:
            return RedirectResponse("/", status_code=303)
        address = request.client.host if request.client else ""
        site.signin.check(address)  # locked out: 429, the key is not even looked at
        import hmac

        if not hmac.compare_digest(form.get("key", "").encode(), site.api_key.encode()):
            site.signin.failed(address)
            return site.page(
                request, "login.html", status=401, error="That is not the key this workbench was started with."
            )
        site.signin.succeeded(address)
        # A new session, never the one the browser came with: a session someone planted stays anonymous.
        site.sessions.end(request.cookies.get(SESSION_COOKIE, ""))
        token, _ = site.sessions.new(signed_in=True)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(SESSION_COOKIE, token, **cookie_flags(request, hours=SESSION_HOURS))
        return resp

    @r.post("/logout")
    async def logout(request: Request):
        site.sessions.end(request.cookies.get(SESSION_COOKIE, ""))  # a copied cookie ends with it
        resp = RedirectResponse("/login" if site.api_key else "/", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    return r

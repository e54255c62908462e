"""The playground: a page at / that speaks through this server's own API. Its files ship in the
package (server/static) and hold no data, so they are served without a key; every call the page
makes to the API carries one, like any other client's."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from orpheus_local.text.tags import SUPPORTED_TAGS

STATIC = Path(__file__).resolve().parent.parent / "static"
# The page's files under /playground/ (server/auth.py's OPEN_PATHS lists each one).
ASSETS = {"playground.js": "text/javascript; charset=utf-8", "playground.css": "text/css; charset=utf-8"}
# The page loads nothing from elsewhere and may be framed by no one; audio plays from blob: URLs.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
                               "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag), so an upgraded server's page is seen at once
}

router = APIRouter(include_in_schema=False)


def _file(name: str, media_type: str):
    async def serve() -> FileResponse:
        return FileResponse(STATIC / name, media_type=media_type, headers=PAGE_HEADERS)

    return serve


router.add_api_route("/", _file("index.html", "text/html; charset=utf-8"), methods=["GET"])
for _name, _media_type in ASSETS.items():
    router.add_api_route(f"/playground/{_name}", _file(_name, _media_type), methods=["GET"])


@router.get("/playground/tags.json")
async def tags() -> dict:
    """The emotive tags the model was trained with: the page's tag buttons."""
    return {"tags": list(SUPPORTED_TAGS)}

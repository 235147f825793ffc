"""`kcloud infer`: call a served model over OIP v2 (`kcloud up` lives in `kcloud.app.commands`)."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from kcloud.admin_client import DEFAULT_URL, KEY_ENV, URL_ENV, error_of
from kcloud.cli_errors import fail


# ------------------------------------------------------------------------------ kcloud infer
def _load_inputs(texts: list[str], files: list[str], metadata: dict) -> dict[str, Any]:
    import numpy as np

    inputs: dict[str, Any] = {}
    if texts:
        text_inputs = [t["name"] for t in metadata.get("inputs", []) if t.get("datatype") == "BYTES"]
        if len(text_inputs) != 1:
            raise fail(f"--text needs a model with exactly one BYTES input; {metadata.get('name')} has "
                       f"{len(text_inputs)}; use --input NAME=FILE.npy")
        inputs[text_inputs[0]] = np.array([t.encode() for t in texts], dtype=object)
    for spec in files:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise fail(f"--input expects NAME=FILE.npy, got {spec!r}")
        if name in inputs:
            raise fail(f"input {name!r} is given twice")
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise fail(f"--input {name}: no such file {path}") from None
        except EOFError:  # numpy's word for an empty or cut-short file; click would print "Aborted."
            raise fail(f"--input {name}: {path} is not a readable .npy array (empty or cut short)") from None
        except (ValueError, OSError) as exc:
            raise fail(f"--input {name}: {path} is not a readable .npy array ({exc})") from None
        if not isinstance(array, np.ndarray):
            raise fail(f"--input {name}: {path} holds several arrays; give one .npy array")
        inputs[name] = array
    if not inputs:
        raise fail("give the model something to compute: --text TEXT or --input NAME=FILE.npy")
    return inputs


def _request(client: Any, method: str, url: str, **kwargs: Any) -> Any:
    import httpx

    try:
        return client.request(method, url, **kwargs)
    except httpx.ConnectError:
        raise fail(f"cannot reach the kcloud gateway at {client.base_url} (is `kcloud up` running?)") \
            from None
    except httpx.TimeoutException:
        raise fail(f"the gateway at {client.base_url} did not answer in time") from None
    except httpx.HTTPError as exc:
        raise fail(f"request to {client.base_url} failed: {exc}") from None


def _json_value(array: Any) -> Any:
    if array.dtype == object:
        return [v.decode(errors="replace") if isinstance(v, bytes) else v for v in array.ravel().tolist()]
    return array.ravel().tolist()


def infer(
    model: str = typer.Argument(..., help="Model name (see `kcloud models list` or GET /v2/models/...)."),
    text: list[str] = typer.Option([], "--text", "-t", help="A text for a text model; repeat for a batch."),
    input_files: list[str] = typer.Option(
        [], "--input", "-i", help="NAME=FILE.npy: an input tensor from a numpy file; repeatable."),
    url: str = typer.Option(DEFAULT_URL, "--url", envvar=URL_ENV,
                            help=f"The gateway's base URL (default: ${URL_ENV}, else {DEFAULT_URL})."),
    version: int | None = typer.Option(None, "--version", min=1, help="Model version (default: latest)."),
    as_json: bool = typer.Option(False, "--json", help="Print the outputs as JSON."),
    timeout: float = typer.Option(60.0, "--timeout", min=0.1, help="Seconds to wait for the answer."),
    api_key: str | None = typer.Option(None, "--api-key", envvar=KEY_ENV, show_default=False,
                                       help=f"API key (default: ${KEY_ENV})."),
) -> None:
    """Call a served model over the Open Inference Protocol (binary tensors) and print its outputs."""
    import httpx
    import numpy as np

    from kcloud.serving.oip import (
        INFERENCE_HEADER_CONTENT_LENGTH,
        CodecError,
        decode_infer_response,
        encode_infer_request,
        parse_header_length,
    )

    base = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout, headers=auth) as client:
        meta = _request(client, "GET", base)
        if meta.status_code != 200:
            raise fail(error_of(meta))
        inputs = _load_inputs(text, input_files, meta.json())
        try:
            body, headers = encode_infer_request(inputs, binary=True, binary_outputs=True)
        except CodecError as exc:
            raise fail(str(exc)) from None
        response = _request(client, "POST", f"{base}/infer", content=body, headers=headers)
        if response.status_code != 200:
            raise fail(error_of(response))
        try:
            outputs, doc = decode_infer_response(
                response.content, parse_header_length(response.headers.get(INFERENCE_HEADER_CONTENT_LENGTH)))
        except CodecError as exc:
            raise fail(f"the gateway sent an answer we cannot read: {exc}") from None

    if as_json:
        typer.echo(json.dumps({
            "model_name": doc.get("model_name"),
            "model_version": doc.get("model_version"),
            "outputs": [
                {"name": name, "datatype": spec.get("datatype"), "shape": list(array.shape),
                 "data": _json_value(array)}
                for (name, array), spec in zip(outputs.items(), doc["outputs"], strict=True)
            ],
        }))
        return
    console = Console()
    console.print(f"[bold]{doc.get('model_name')}[/bold] v{doc.get('model_version')}")
    with np.printoptions(precision=4, threshold=64, edgeitems=4, suppress=True):
        for (name, array), spec in zip(outputs.items(), doc["outputs"], strict=True):
            console.print(f"[cyan]{escape(name)}[/cyan] {spec.get('datatype')} {list(array.shape)}")
            console.print(escape(str(array)), highlight=False)


def register(app: typer.Typer) -> None:
    """Add `kcloud infer` to the `kcloud` app."""
    app.command("infer")(infer)

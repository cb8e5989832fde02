// The desktop's HTTP side (docs/desktop.md, "HTTP"): the session, login, logout,
// uploads and download links. State-changing requests carry the CSRF token that
// /api/session and /api/login answer with.

let csrf = null;
let maxUpload = 0; // bytes, from the session (0: not told)

export class HttpError extends Error {
    constructor(status, kind, message) {
        super(message);
        this.status = status;
        this.kind = kind;
    }
}

async function answer(res) {
    let body = null;
    try {
        body = await res.json();
    } catch {
        body = null;
    }
    if (res.ok) return body || {};
    const message = (body && body.error) || `HTTP ${res.status}`;
    const kind = (body && body.kind) || `HTTP${res.status}`;
    throw new HttpError(res.status, kind, message);
}

/** The current session ({user, csrf, runtime}), or null when not logged in (401). */
export async function getSession() {
    const res = await fetch('/api/session', { credentials: 'same-origin', cache: 'no-store' });
    if (res.status === 401) {
        csrf = null;
        return null;
    }
    const session = await answer(res);
    remember(session);
    return session;
}

function remember(session) {
    csrf = session.csrf || null;
    maxUpload = Number(session.max_upload) || 0;
}

export function uploadLimit() {
    return maxUpload;
}

/** Log in; resolves with the session, rejects with an HttpError (401: refused). */
export async function login(user, password) {
    const res = await fetch('/api/login', {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ user, password }),
    });
    const session = await answer(res);
    remember(session);
    return session;
}

export async function logout() {
    const res = await fetch('/api/logout', {
        method: 'POST',
        credentials: 'same-origin',
        headers: csrfHeaders({ 'Content-Type': 'application/json' }),
        body: '{}',
    });
    csrf = null;
    return answer(res);
}

export function csrfHeaders(headers = {}) {
    return csrf ? { ...headers, 'X-OneOS-CSRF': csrf } : headers;
}

/**
 * Upload *file* (a File or Blob) to the tree at *path* with XMLHttpRequest, for its
 * progress events. Returns {promise, abort}; onProgress(loaded, total) as it goes.
 */
export function upload(path, file, onProgress) {
    if (maxUpload && file.size > maxUpload) {
        const mib = (maxUpload / 1048576).toFixed(maxUpload < 10485760 ? 1 : 0);
        return {
            promise: Promise.reject(new HttpError(413, 'EFBIG', `larger than the upload limit (${mib} MiB)`)),
            abort: () => {},
        };
    }
    const xhr = new XMLHttpRequest();
    const promise = new Promise((resolve, reject) => {
        xhr.open('POST', '/api/upload?path=' + encodeURIComponent(path));
        xhr.withCredentials = true;
        xhr.setRequestHeader('Content-Type', 'application/octet-stream');
        if (csrf) xhr.setRequestHeader('X-OneOS-CSRF', csrf);
        xhr.upload.onprogress = (ev) => onProgress && onProgress(ev.loaded, ev.lengthComputable ? ev.total : file.size);
        xhr.onload = () => {
            let body = null;
            try {
                body = JSON.parse(xhr.responseText);
            } catch {
                body = null;
            }
            if (xhr.status >= 200 && xhr.status < 300) resolve(body || {});
            else {
                const message = (body && body.error) || (xhr.status === 413 ? 'file too large' : `HTTP ${xhr.status}`);
                reject(new HttpError(xhr.status, (body && body.kind) || `HTTP${xhr.status}`, message));
            }
        };
        xhr.onerror = () => reject(new HttpError(0, 'ENETWORK', 'upload failed: the connection broke'));
        xhr.onabort = () => reject(new HttpError(0, 'ECANCELED', 'upload cancelled'));
        xhr.send(file);
    });
    return { promise, abort: () => xhr.abort() };
}

export function downloadUrl(path) {
    return '/api/download?path=' + encodeURIComponent(path);
}

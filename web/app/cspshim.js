// xterm.js's DOM renderer writes CSS into <style> elements and style="" attributes.
// The desktop's Content-Security-Policy (default-src 'self', no 'unsafe-inline') makes
// the browser refuse both, which breaks the terminal's colours and sizes. The CSSOM is
// not subject to that policy, so this module, loaded before xterm.js, turns
//   * document.createElement('style') into an inert <oneos-style> element whose text goes to
//     a constructable stylesheet in document.adoptedStyleSheets (dropped with the element;
//     a real <style>, even an empty one, is reported as a violation when inserted), and
//   * setAttribute('style', text) into element.style.cssText = text.
// Nothing else on the page makes <style> elements or sets style attributes.

const createElement = Document.prototype.createElement;
const setAttribute = Element.prototype.setAttribute;

function adopt(doc, el) {
    const sheet = new CSSStyleSheet();
    let text = '';
    let adopted = false;
    Object.defineProperty(el, 'textContent', {
        configurable: true,
        get: () => text,
        set(value) {
            text = value == null ? '' : String(value);
            sheet.replaceSync(text);
            if (!adopted) {
                doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
                adopted = true;
            }
        },
    });
    const remove = el.remove;
    el.remove = function () {
        if (adopted) {
            doc.adoptedStyleSheets = doc.adoptedStyleSheets.filter((s) => s !== sheet);
            adopted = false;
        }
        return remove.call(this);
    };
}

Document.prototype.createElement = function (name, options) {
    if (typeof name === 'string' && name.toLowerCase() === 'style') {
        const stand = createElement.call(this, 'oneos-style');
        adopt(this, stand);
        return stand;
    }
    return createElement.call(this, name, options);
};

Element.prototype.setAttribute = function (name, value) {
    if (typeof name === 'string' && name.toLowerCase() === 'style' && this.style) {
        this.style.cssText = String(value);
        return undefined;
    }
    return setAttribute.call(this, name, value);
};

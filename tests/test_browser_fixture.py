"""The browser fixture itself: Debian's Chromium starts headless, runs JavaScript, and the page's
console errors and uncaught errors (rejected promises included) are collected for the test to assert."""


def test_a_clean_page_reports_nothing(browser_page):
    page = browser_page.page
    page.set_content("<title>ok</title><p id=x></p><script>document.getElementById('x').textContent = 6 * 7</script>")
    assert page.text_content("#x") == "42"
    browser_page.assert_no_errors()


def test_console_errors_and_uncaught_errors_are_collected(browser_page):
    page = browser_page.page
    page.set_content("<script>console.error('bad thing'); Promise.reject(new Error('nobody caught me'));"
                     "setTimeout(() => { throw new Error('thrown later') }, 0)</script>")
    page.wait_for_timeout(200)
    text = "\n".join(browser_page.errors)
    assert "bad thing" in text and "nobody caught me" in text and "thrown later" in text, text


def test_images_decode_and_the_screenshot_is_a_small_palette_png(browser_page, tmp_path):
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 40, 40)).save(buf, format="PNG")
    src = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    browser_page.page.set_content(f"<h1 id=top>report</h1><img class=fig src='{src}'><img class=fig src='{src}'>")
    browser_page.wait_decoded("img.fig")
    browser_page.save_screenshot(tmp_path / "shot.png", down_to="#top")
    shot = Image.open(tmp_path / "shot.png")
    assert shot.mode == "P" and shot.width == 1100 and shot.height < 200
    browser_page.page.evaluate("console.error('expected: status of 404')")
    browser_page.assert_no_errors("status of 404")

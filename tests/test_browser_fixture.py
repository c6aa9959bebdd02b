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

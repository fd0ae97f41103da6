// Drives the dashboard in headless Chromium against a running tracker.
// Env: BASE_URL, API_KEY, ADMIN_USER, ADMIN_PASSWORD, SCREENSHOT_DIR, CHROMIUM.
// A share link for a file (with its copy button). Management (admins): API keys created and
// revoked, a viewer created, a file removed; the
// viewer then sees no management and the tracker refuses its changes with 403.
import { createHash, createHmac, createPrivateKey, createPublicKey, diffieHellman } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

const { BASE_URL, API_KEY, ADMIN_USER, ADMIN_PASSWORD } = process.env;
const SHOTS = process.env.SCREENSHOT_DIR ?? 'screenshots';
mkdirSync(SHOTS, { recursive: true });

const sha = (...parts) => { const h = createHash('sha256'); for (const p of parts) h.update(p); return h.digest(); };

async function api(path, body, peerToken) {
  const headers = { 'X-API-Key': API_KEY, 'content-type': 'application/json' };
  if (peerToken) headers['X-Peer-Token'] = peerToken;
  const resp = await fetch(BASE_URL + path, { method: 'POST', headers, body: JSON.stringify(body) });
  if (!resp.ok) throw new Error(`${path}: ${resp.status} ${await resp.text()}`);
  return resp.json();
}

// Peer n's X25519 key pair (its public key is its peer id), from raw bytes via DER.
const X25519_PKCS8 = Buffer.from('302e020100300506032b656e04220420', 'hex');
const X25519_SPKI = Buffer.from('302a300506032b656e032100', 'hex');
const peerKey = (n) => createPrivateKey({ key: Buffer.concat([X25519_PKCS8, sha(`e2e-peer-${n}`)]), format: 'der', type: 'pkcs8' });
function peerId(n) {
  return createPublicKey(peerKey(n)).export({ format: 'der', type: 'spki' }).subarray(-32).toString('hex');
}
const tokens = new Map();

/** Registers peer n with a proof of its key (docs/protocol.md §8); keeps its peer token. */
async function register(n, body) {
  const challenge = await api('/api/peers/challenge', { peer_id: peerId(n) });
  const trackerKey = Buffer.from(challenge.tracker_key, 'hex');
  const shared = diffieHellman({
    privateKey: peerKey(n),
    publicKey: createPublicKey({ key: Buffer.concat([X25519_SPKI, trackerKey]), format: 'der', type: 'spki' }),
  });
  const mac = createHmac('sha256', shared).update('p2p-tracker/1 peer proof').update(trackerKey)
    .update(Buffer.from(challenge.nonce, 'hex')).update(Buffer.from(peerId(n), 'hex')).digest('hex');
  const answer = await api('/api/peers/register', { ...body, peer_id: peerId(n), proof: { nonce: challenge.nonce, mac } });
  tokens.set(n, answer.peer_token);
}

/** Registers peer n and announces a one-chunk file named `name`. */
async function share(n, name) {
  await register(n, { addresses: [`192.0.2.${n}`], port: 6880 + n });
  const data = Buffer.from(`content of ${name} `.repeat(1000));
  const chunk = sha(data);
  const root = sha(Buffer.from([0]), chunk);
  await api('/api/files/announce', {
    peer_id: peerId(n),
    file: {
      id: sha(data).toString('hex'), name, size: data.length, chunk_size: 262144,
      chunk_hashes: [chunk.toString('hex')], merkle_root: root.toString('hex'),
    },
  }, tokens.get(n));
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const problems = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e}`));
  // Removals and revocations ask for confirmation; the test says yes.
  page.on('dialog', (d) => d.accept());

  await share(1, 'first-file.iso');
  // Peer 1 reports reaching peer 2 through a hole punch (the peers table shows it).
  await api('/api/peers/heartbeat', { peer_id: peerId(1), connections: [{ peer_id: peerId(2), path: 'hole_punched' }] }, tokens.get(1));

  // Nothing but the login page without a session.
  await page.goto(BASE_URL + '/dashboard/');
  await page.getByLabel('Username').waitFor({ timeout: 15000 });
  if (await page.getByTestId('peers-online').count() !== 0) throw new Error('overview visible before login');

  // A wrong password is refused.
  await page.getByLabel('Username').fill(ADMIN_USER);
  await page.getByLabel('Password').fill('not the password');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').filter({ hasText: 'wrong username or password' }).waitFor({ timeout: 10000 });
  await page.screenshot({ path: `${SHOTS}/1-login-failed.png` });
  console.log('ok: wrong password refused');

  // The right one opens the overview with the right counts.
  await page.getByLabel('Password').fill(ADMIN_PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  const expectText = async (testId, text, timeout) => {
    await page.waitForFunction(
      ([id, want]) => document.querySelector(`[data-testid="${id}"]`)?.textContent?.trim() === want,
      [testId, text], { timeout });
  };
  await expectText('peers-online', '1', 10000);
  await expectText('files-shared', '1', 10000);
  await page.waitForFunction(() => document.querySelector('[data-testid="live-status"]')?.textContent?.includes('live'), null, { timeout: 10000 });
  await page.screenshot({ path: `${SHOTS}/2-overview.png` });
  console.log('ok: logged in, counts 1 peer / 1 file, live feed connected');

  // A new peer and file appear within 2 s, without a reload.
  const started = Date.now();
  await share(2, 'second-file.mkv');
  await expectText('peers-online', '2', 2000);
  await expectText('files-shared', '2', 2000);
  await page.getByTestId('event-log').filter({ hasText: 'shared new file second-file.mkv' }).waitFor({ timeout: 2000 });
  const took = Date.now() - started;
  await page.screenshot({ path: `${SHOTS}/3-live-update.png` });
  console.log(`ok: new peer and file shown after ${took} ms without reload`);

  // A peer that registers no address is shown where the tracker saw it, not as "?".
  await register(3, { addresses: [], port: 6883 });
  const observed = new URL(BASE_URL).hostname.replace(/^\[|\]$/g, '');
  await page.getByTestId('event-log').filter({ hasText: `joined at ${observed}:6883` }).waitFor({ timeout: 2000 });
  if (await page.getByTestId('event-log').filter({ hasText: '?:' }).count() !== 0) throw new Error('an event names an unknown address');
  console.log('ok: a peer without addresses joins at the address the tracker saw');

  await page.getByRole('button', { name: 'Peers' }).click();
  await page.getByTestId('peers-table').getByText('192.0.2.2:6882').waitFor({ timeout: 5000 });
  await page.getByTestId('peers-table').getByText('1 hole-punched').waitFor({ timeout: 5000 });
  await page.screenshot({ path: `${SHOTS}/4-peers.png` });
  console.log('ok: the peers table shows how a peer reaches others');
  await page.getByRole('button', { name: 'Files', exact: true }).click();
  await page.getByLabel('Search files').fill('second');
  await page.getByTestId('files-table').getByText('second-file.mkv').waitFor({ timeout: 5000 });
  if (await page.getByTestId('files-table').getByText('first-file.iso').count() !== 0) throw new Error('search did not filter');
  await page.screenshot({ path: `${SHOTS}/5-files.png` });
  await page.getByRole('button', { name: 'second-file.mkv', exact: true }).click();
  await page.getByText('Peers with this file').waitFor({ timeout: 5000 });
  await page.getByText('192.0.2.2:6882').waitFor({ timeout: 5000 });
  await page.screenshot({ path: `${SHOTS}/6-file-detail.png` });
  console.log('ok: peers table, file search and file detail');

  // An admin creates an API key: shown once, listed, working; then revokes it.
  const status = async (path, headers) => (await fetch(BASE_URL + path, { headers })).status;
  await page.getByRole('button', { name: '← All files' }).click();

  // A share link for a file: made with a read grant, shown with a copy button.
  await page.getByRole('button', { name: 'Share link for second-file.mkv' }).click();
  await page.waitForFunction(() => /^p2p1[a-z2-7]{100,}$/.test(document.querySelector('[data-testid="share-link"]')?.value ?? ''), null, { timeout: 10000 });
  const link = await page.getByTestId('share-link').inputValue();
  if (await page.getByRole('button', { name: 'Copy link' }).count() !== 1) throw new Error('no copy button for the link');
  await page.getByText('without an API key').waitFor({ timeout: 5000 });
  await page.screenshot({ path: `${SHOTS}/7-share-link.png` });
  await page.getByRole('button', { name: 'Close link' }).click();
  console.log(`ok: share link shown with a copy button (${link.length} characters)`);

  await page.getByRole('button', { name: 'Manage' }).click();
  await page.locator('#key-name').fill('e2e-laptop');
  await page.getByRole('button', { name: 'Create key' }).click();
  const newKey = (await page.getByTestId('new-key').textContent({ timeout: 10000 })).trim();
  if (!/^p2pk_[0-9a-f]{64}$/.test(newKey)) throw new Error(`not a key: ${newKey}`);
  const keyRow = page.getByTestId('keys-table').locator('tr', { hasText: 'e2e-laptop' });
  await keyRow.getByText('active').waitFor({ timeout: 5000 });
  if (await page.getByRole('button', { name: 'Copy key' }).count() !== 1) throw new Error('no copy button');
  if (await status('/api/stats', { 'X-API-Key': newKey }) !== 200) throw new Error('the new key does not work');
  await page.screenshot({ path: `${SHOTS}/10-key-created.png`, fullPage: true });
  await page.getByRole('button', { name: 'Done' }).click();
  if (await page.getByTestId('new-key').count() !== 0) throw new Error('the key is still shown');
  await page.getByRole('button', { name: 'Revoke key e2e-laptop' }).click();
  await keyRow.getByText(/revoked/).waitFor({ timeout: 5000 });
  if (await status('/api/stats', { 'X-API-Key': newKey }) !== 401) throw new Error('the revoked key still works');
  console.log('ok: API key created (shown once, working), listed and revoked (refused)');

  // A viewer is created.
  await page.locator('#new-user').fill('watcher');
  await page.locator('#new-password').fill('watcher-password');
  await page.locator('#new-role').selectOption('viewer');
  await page.getByRole('button', { name: 'Create user' }).click();
  await page.getByTestId('users-table').locator('tr', { hasText: 'watcher' }).getByText('viewer').waitFor({ timeout: 10000 });
  if (await page.getByRole('button', { name: `Delete user ${ADMIN_USER}` }).count() !== 0) throw new Error('admins may delete themselves');
  await page.screenshot({ path: `${SHOTS}/11-manage.png`, fullPage: true });
  console.log('ok: viewer created');

  // A file removed for everyone leaves the list and the count, and the event log says so.
  await page.getByRole('button', { name: 'Files', exact: true }).click();
  await page.getByTestId('files-table').getByText('first-file.iso').waitFor({ timeout: 5000 });
  await page.getByRole('button', { name: 'Remove first-file.iso' }).click();
  await page.waitForFunction(() => !document.querySelector('[data-testid="files-table"]')?.textContent?.includes('first-file.iso'), null, { timeout: 5000 });
  await page.getByTestId('files-table').getByText('second-file.mkv').waitFor({ timeout: 5000 });
  await page.screenshot({ path: `${SHOTS}/12-file-removed.png` });
  await page.getByRole('button', { name: 'Overview' }).click();
  await expectText('files-shared', '1', 5000);
  await page.getByTestId('event-log').filter({ hasText: 'file first-file.iso' }).filter({ hasText: 'removed by an admin' }).waitFor({ timeout: 5000 });
  console.log('ok: file removed, gone from the list and the count');

  await page.setViewportSize({ width: 390, height: 844 });
  await page.getByRole('button', { name: 'Overview' }).click();
  await page.screenshot({ path: `${SHOTS}/7-phone.png`, fullPage: true });

  // Logout returns to the login page, and a reload stays there.
  await page.getByRole('button', { name: 'Log out' }).click();
  await page.getByLabel('Username').waitFor({ timeout: 5000 });
  await page.reload();
  await page.getByLabel('Username').waitFor({ timeout: 15000 });
  if (await page.getByTestId('peers-online').count() !== 0) throw new Error('still logged in after logout');
  await page.screenshot({ path: `${SHOTS}/8-logged-out.png` });
  console.log('ok: logout');

  // A stored session past its expiry is not used; one the tracker refuses ends with a notice.
  await page.evaluate(() => sessionStorage.setItem('p2p-session', JSON.stringify(
    { token: 'expired', subject: 'admin', expires_at_ms: Date.now() - 1000 })));
  await page.reload();
  await page.getByLabel('Username').waitFor({ timeout: 15000 });
  await page.evaluate(() => sessionStorage.setItem('p2p-session', JSON.stringify(
    { token: 'not.a.token', subject: 'admin', expires_at_ms: Date.now() + 3600000 })));
  await page.reload();
  await page.getByRole('status').filter({ hasText: 'session has expired' }).waitFor({ timeout: 15000 });
  await page.getByLabel('Username').waitFor({ timeout: 5000 });
  await page.screenshot({ path: `${SHOTS}/9-session-expired.png` });
  console.log('ok: expired and refused sessions return to the login page');

  // The viewer sees everything but no management, and the tracker refuses its changes.
  await page.getByLabel('Username').fill('watcher');
  await page.getByLabel('Password').fill('watcher-password');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expectText('files-shared', '1', 10000);
  if (await page.getByRole('button', { name: 'Manage' }).count() !== 0) throw new Error('a viewer sees Manage');
  await page.getByRole('button', { name: 'Files', exact: true }).click();
  await page.getByTestId('files-table').getByText('second-file.mkv').waitFor({ timeout: 5000 });
  await page.getByRole('button', { name: 'Peers' }).click();
  await page.getByTestId('peers-table').getByText('192.0.2.2:6882').waitFor({ timeout: 5000 });
  if (await page.getByRole('button', { name: /^(Remove|Revoke|Delete)/ }).count() !== 0) throw new Error('a viewer sees management buttons');
  await page.screenshot({ path: `${SHOTS}/13-viewer-peers.png` });
  const viewer = await page.evaluate(() => JSON.parse(sessionStorage.getItem('p2p-session')).token);
  const second = sha(Buffer.from('content of second-file.mkv '.repeat(1000))).toString('hex');
  const refused = await fetch(`${BASE_URL}/api/files/${second}`, { method: 'DELETE', headers: { Authorization: `Bearer ${viewer}` } });
  if (refused.status !== 403) throw new Error(`a viewer's removal answered ${refused.status}`);
  if (await status('/api/keys', { Authorization: `Bearer ${viewer}` }) !== 403) throw new Error('a viewer lists keys');
  console.log('ok: a viewer sees no management buttons and is refused with 403');

  // The only console errors allowed are the browser's own report of the refused login (401).
  const unexpected = problems.filter((p) => !p.includes('401'));
  if (unexpected.length) throw new Error('console errors:\n' + unexpected.join('\n'));
  console.log('ok: no console errors');
} finally {
  await browser.close();
}

// Shared by pgpush's pages: the connection badge in the header.

/** Shows `client`'s connection state in `element` (the header's `.status`). */
export function showConnection(client, element) {
  client.on('connected', ({ transport }) => {
    element.textContent = `live · ${transport}`;
    element.classList.add('live');
  });
  client.on('disconnected', () => {
    element.textContent = 'reconnecting';
    element.classList.remove('live');
  });
}
